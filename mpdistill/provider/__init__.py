"""The provider boundary: one SDK call mapped onto the error tree, answers, the guarded transport;
endpoints and where they come from.

May import errors, and `engine.retry.parse_retry_after` (the one Retry-After reader).
"""

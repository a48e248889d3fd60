"""The provider boundary: one SDK call mapped onto the error tree; endpoints and where they come from.

May import errors.
"""

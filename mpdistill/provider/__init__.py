"""The provider boundary: one SDK call mapped onto the error tree (`client`), what a 2xx answer says
(`answer`), the HTTP layer under the SDK (`transport`: total deadline, size cap, same-origin
redirects); endpoints and where they come from.

May import errors, and `engine.retry.parse_retry_after` (the one Retry-After reader).
"""

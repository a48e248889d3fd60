"""The provider boundary: one SDK call mapped onto the error tree (`client`), what a 2xx answer says
(`answer`), the chat call (`chat` on `conn` from threads, `aiochat` from event loops) and what every
client enforces (`guards`: total deadline, a paced call's slot, size cap, same-origin redirects; under
the SDK's httpx client for batch mode: `transport`); endpoints and where they come from.

May import errors, and `engine.retry.parse_retry_after` (the one Retry-After reader).
"""

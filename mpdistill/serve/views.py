"""What the server shows of a status or summary file: the same data with nothing secret in it.

Status files already mask keys; the server drops even the masked form and any credentials in a
URL, so no response of the server carries any part of a key.
"""
from __future__ import annotations

import re
from typing import Any

SECRET_FIELDS = {"key", "api_key", "keys", "api_keys"}
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def public_status(data: Any) -> Any:
    """`data` (a status or summary dict) without key fields and with URL credentials removed."""
    if isinstance(data, dict):
        return {k: public_status(v) for k, v in data.items() if k not in SECRET_FIELDS}
    if isinstance(data, list):
        return [public_status(v) for v in data]
    if isinstance(data, str) and "@" in data:
        return _URL_CREDENTIALS.sub(r"\g<scheme>", data)
    return data

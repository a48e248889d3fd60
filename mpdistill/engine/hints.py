"""Server rate hints read from response headers: x-ratelimit-remaining-* and x-ratelimit-reset-*."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def exhausted_holds(headers: Mapping, cap_s: float) -> list[float | None]:
    """For each budget (requests, tokens) the headers say is spent: seconds until its reset
    (at most `cap_s`), or None when no readable reset header came with it."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    holds = []
    for kind in ("requests", "tokens"):
        remaining = number(lower.get(f"x-ratelimit-remaining-{kind}"))
        if remaining is None or remaining > 0:
            continue
        reset = duration(lower.get(f"x-ratelimit-reset-{kind}"))
        holds.append(min(reset, cap_s) if reset is not None else None)
    return holds


def number(value: object) -> float | None:
    """A finite float from a header value; None when unreadable."""
    try:
        parsed = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return parsed if math.isfinite(parsed) else None


def duration(value: object) -> float | None:
    """Seconds from a reset header: `12`, `1.5`, `20ms`, `6m0s`, `1h2m3s`; None when unreadable."""
    if value is None:
        return None
    plain = number(value)
    if plain is not None:
        return plain if plain >= 0 else None
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)

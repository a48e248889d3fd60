"""Who may call the server: a bearer token, compared in constant time; required off loopback."""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8780
# Paths anyone may fetch: the dashboard's page and its files hold no data (the page asks for the token).
PUBLIC_PATHS = ("/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


@dataclass(frozen=True)
class ServeSettings:
    """Everything the server needs, fixed at start."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)
    watch: tuple[str, ...] = ("checkpoints",)   # folders whose status files are shown
    jobs_dir: str = "jobs"                       # one folder per job submitted over HTTP

    def check(self) -> ServeSettings:
        """Refuse to listen beyond this machine without a token."""
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"serve: listening on {self.host} needs a token (--token or MPDISTILL_TOKEN); "
                              "without one only 127.0.0.1 / ::1 / localhost are allowed")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("serve: the token must be at least 8 characters")
        return self

    @property
    def watched(self) -> list[Path]:
        return [Path(w) for w in self.watch] + [Path(self.jobs_dir)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def authorized(header: str | None, token: str | None) -> bool:
    """True when no token is set, or `header` is `Bearer <token>` (constant-time comparison)."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())

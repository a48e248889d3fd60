"""`mpdistill serve`: flags → ServeSettings → the server. No logic lives here."""
from __future__ import annotations

import os
import sys

from ..errors import ConfigError
from .main import EXIT_USAGE, _Parser


def serve_parser() -> _Parser:
    p = _Parser(prog="mpdistill serve", description="Live dashboard, HTTP job API and /metrics for mpdistill runs.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                   "any other needs a token)")
    p.add_argument("--port", type=int, default=8780, help="port (default 8780)")
    p.add_argument("--token", help="bearer token every API call must send (env MPDISTILL_TOKEN)")
    p.add_argument("--watch", action="append", metavar="DIR",
                   help="folder whose *_status.json files are shown (repeatable; default checkpoints/)")
    p.add_argument("--jobs-dir", default="jobs", help="one folder per job submitted over HTTP (default jobs/)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def serve_command(argv: list[str]) -> int:
    from ..logs import setup_logging
    from ..serve.auth import ServeSettings
    from ..serve.server import serve
    args = serve_parser().parse_args(argv)
    token = args.token or os.environ.get("MPDISTILL_TOKEN") or None
    setup_logging(None, "serve", [token] if token else [], args.verbose)
    settings = ServeSettings(host=args.host, port=args.port, token=token,
                             watch=tuple(args.watch or ["checkpoints"]), jobs_dir=args.jobs_dir)
    try:
        settings.check()
    except ConfigError as err:
        print(f"mpdistill: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"mpdistill serve: dashboard on http://{args.host}:{args.port}/ (Ctrl-C to stop)"
          + ("; API calls need the bearer token" if token else ""), file=sys.stderr, flush=True)
    try:
        return serve(settings)
    except ConfigError as err:
        print(f"mpdistill: error: {err}", file=sys.stderr)
        return EXIT_USAGE

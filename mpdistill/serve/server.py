"""Run the app on uvicorn until interrupted."""
from __future__ import annotations

import logging

from ..errors import ConfigError
from .auth import ServeSettings

log = logging.getLogger(__name__)


def serve(settings: ServeSettings) -> int:
    """Listen on settings.host:port and serve until Ctrl-C; returns the exit code."""
    try:
        import uvicorn
        from .app import create_app
    except ImportError as err:
        raise ConfigError("mpdistill serve needs its extra: pip install 'mpdistill[serve]'") from err
    app = create_app(settings)
    log.info("serving on http://%s:%d/ (jobs in %s; watching %s)", settings.host, settings.port,
             settings.jobs_dir, ", ".join(settings.watch))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0

"""mpdistill: crash-safe, fast batches of OpenAI-compatible chat completions over JSONL.

Public API: `run`, `RunConfig`, `CheckpointManager`, `load_checkpoint`, `clear_checkpoint`,
`list_checkpoints`, `MockServer`.
"""
__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .state.checkpoint import CheckpointManager, clear_checkpoint, list_checkpoints, load_checkpoint  # noqa: E402


def run(config, rows=None, **kwargs):
    """Run a job; see `mpdistill.api.run`."""
    from .api import run as _run
    return _run(config, rows, **kwargs)


def __getattr__(name):
    if name == "MockServer":
        from .mock.server import MockServer
        return MockServer
    raise AttributeError(name)


__all__ = ["run", "RunConfig", "CheckpointManager", "load_checkpoint", "clear_checkpoint",
           "list_checkpoints", "MockServer", "__version__"]

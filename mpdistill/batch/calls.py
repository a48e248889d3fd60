"""The Files and Batches calls of batch mode through the openai SDK, mapped onto mpdistill's errors.

Each function is one provider call; the status-to-class mapping is `status.error_for_status`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import openai

from ..provider.client import sdk_errors

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
METADATA_KEY = "mpdistill_batch"
_FIND_PAGES = 20          # batches.list pages (100 each) searched for a marker


def _sdk(api: openai.OpenAI, fn: Callable, *args, **kwargs) -> Any:
    """Call the SDK; raise the CallError of the failure (the online calls' own mapping)."""
    with sdk_errors(api):
        return fn(*args, **kwargs)


def upload(api: openai.OpenAI, path: Path) -> str:
    """Upload a batch input file; its file id."""
    with open(path, "rb") as f:
        return _sdk(api, api.files.create, file=(path.name, f), purpose="batch").id


def create(api: openai.OpenAI, file_id: str, marker: str) -> Any:
    """Create the batch of `file_id`, tagged with `marker` so a rerun can find it."""
    return _sdk(api, api.batches.create, input_file_id=file_id, endpoint=ENDPOINT, completion_window=WINDOW,
                metadata={METADATA_KEY: marker})


def find(api: openai.OpenAI, marker: str) -> Any | None:
    """The batch created under `marker`, searched among the newest batches of this key; None if absent."""
    page = _sdk(api, api.batches.list, limit=100)
    for _ in range(_FIND_PAGES):
        for batch in page.data:
            if (batch.metadata or {}).get(METADATA_KEY) == marker:
                return batch
        if not page.has_next_page():
            return None
        page = _sdk(api, page.get_next_page)
    return None


def retrieve(api: openai.OpenAI, batch_id: str) -> Any:
    return _sdk(api, api.batches.retrieve, batch_id)


def cancel(api: openai.OpenAI, batch_id: str) -> Any:
    return _sdk(api, api.batches.cancel, batch_id)


def download(api: openai.OpenAI, file_id: str, path: Path) -> Path:
    """Stream a result file to `path` (a rerun downloads it again: no fsync needed)."""
    def fetch() -> None:
        with api.files.with_streaming_response.content(file_id) as response, open(path, "wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    _sdk(api, fetch)
    return path

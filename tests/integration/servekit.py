"""Helpers for the `mpdistill serve` tests: a real uvicorn on 127.0.0.1:0, HTTP calls, job configs."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, write_jsonl


def prepare_env(monkeypatch, tmp_path: Path) -> None:
    """Jobs inherit the server's environment: no real keys, the source tree importable, cwd = tmp_path."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "MPDISTILL_", "OTEL_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)


def job_config(tmp_path: Path, url: str, n: int, name: str = "job", **extra) -> dict:
    """A JSON run config over a fresh input of `n` rows, every file under tmp_path."""
    src = write_jsonl(tmp_path / f"{name}.jsonl", [{"id": f"{name}-{i}", "prompt": f"question {i}"} for i in range(n)])
    return {"input": str(src), "output": str(tmp_path / "out" / f"{name}.jsonl"), "model": "mock-model",
            "run_name": name, "base_url": url, "api_key": "sk-test-serve-000001", "processes": 1,
            "checkpoint_dir": str(tmp_path / "ck"), "log_dir": str(tmp_path / "logs"), "checkpoint_interval": 1,
            "retry_base": 0.05, "retry_max": 0.2, **extra}


class LiveServer:
    """`create_app(settings)` served by uvicorn in a thread on a free port of 127.0.0.1."""

    def __init__(self, settings) -> None:
        import uvicorn
        from mpdistill.serve.app import create_app
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def call(self, method: str, path: str, body=None, token: str | None = None, content_type="application/json"):
        """(status, parsed JSON or text) of one HTTP call."""
        data = None
        headers = {}
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as res:
                return res.status, _parse(res.read(), res.headers.get("content-type"))
        except urllib.error.HTTPError as err:
            return err.code, _parse(err.read(), err.headers.get("content-type"))


def _parse(raw: bytes, content_type: str | None):
    return json.loads(raw) if "json" in (content_type or "") else raw.decode()


def wait_job(get, job_id: str, predicate, timeout: float = 60.0) -> dict:
    """Poll `get(job_id)` (a view dict) until `predicate(view)`; the last view either way."""
    deadline = time.time() + timeout
    view = get(job_id)
    while not predicate(view) and time.time() < deadline:
        time.sleep(0.1)
        view = get(job_id)
    return view


ENDED = ("finished", "stopped", "failed", "crashed", "aborted", "interrupted")


def ended(view: dict) -> bool:
    """The job's process has exited (its status file may say `finished` a moment before)."""
    return view["state"] in ENDED and view["exit_code"] is not None

"""Shared test helpers: a mock server on a free port, input files, running the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict:
    """The environment for a run: no real keys or URLs leak in from the developer's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "MPDISTILL_")) and k not in ("PYTEST_CURRENT_TEST",)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for(predicate, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> bool:
    """Poll `predicate` until it is true (True), the timeout passes or `proc` exits (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def line_count(path: Path) -> int:
    """Complete lines in a file (0 if it does not exist yet)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


MODES = ("process", "thread", "async")


def pool_flags(mode: str, processes: int) -> list[str]:
    """`-p`, `-c` and `--mode` flags that keep `processes` requests in flight in `mode`."""
    if mode == "thread":
        return ["--mode", "thread", "-p", "1", "-c", str(processes)]
    if mode == "async":
        workers = min(2, processes)
        return ["--mode", "async", "-p", str(workers), "-c", str(-(-processes // workers))]
    return ["-p", str(processes)]


class Workdir:
    """A tmp directory laid out like a user's project, with the CLI run as a real subprocess.

    `mode` (process, thread, async) runs every command in that execution mode with as many
    requests in flight as `processes` would hold in process mode.
    """

    def __init__(self, root: Path, url: str | None, mode: str = "process") -> None:
        self.root = root
        self.url = url
        self.mode = mode
        self.input = root / "input.jsonl"
        self.output = root / "out" / "results.jsonl"
        self.errors = root / "out" / "results.errors.jsonl"
        self.summary = root / "out" / "results.summary.json"
        self.checkpoints = root / "checkpoints"

    def args(self, *extra: str, processes: int = 4) -> list[str]:
        base = ["-i", str(self.input), "-o", str(self.output), "-m", "mock-model", *pool_flags(self.mode, processes),
                "--checkpoint-dir", str(self.checkpoints), "--log-dir", str(self.root / "logs"),
                "--no-progress", "--retry-base-delay", "0.05", "--retry-max-delay", "0.2"]
        if self.url:
            base += ["--base-url", self.url, "--api-key", "sk-test-0001"]
        return base + list(extra)

    def popen(self, *extra: str, processes: int = 4, script: str = "-m", **kw) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "mpdistill", *self.args(*extra, processes=processes)]
        return subprocess.Popen(cmd, cwd=self.root, env=clean_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kw)

    def run(self, *extra: str, processes: int = 4, timeout: float = 90) -> subprocess.CompletedProcess:
        proc = self.popen(*extra, processes=processes)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def results(self) -> list[dict]:
        return read_jsonl(self.output)

    def failures(self) -> list[dict]:
        return read_jsonl(self.errors)


@pytest.fixture
def mock_server():
    """A fresh built-in mock endpoint on a free port."""
    from mpdistill.mock.server import MockServer
    with MockServer() as server:
        yield server


@pytest.fixture
def workdir(tmp_path, mock_server):
    """A project directory whose runs talk to `mock_server`."""
    return Workdir(tmp_path, mock_server.url)


def run_until_disk_full(workdir) -> subprocess.CompletedProcess:
    """Run 200 rows with a 30 kB file-size limit standing in for a full disk (EFBIG, not SIGXFSZ)."""
    import resource
    import signal
    write_jsonl(workdir.input, [{"id": f"r{i}", "prompt": "x" * 300 + str(i)} for i in range(200)])

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    cmd = [sys.executable, "-m", "mpdistill", *workdir.args(processes=4)]
    return subprocess.run(cmd, cwd=workdir.root, env=clean_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=limit_file_size)

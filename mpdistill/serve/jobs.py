"""The runs the server can see: jobs it started (one folder each under the jobs folder) and runs
found by their status files under the watched folders; start, stop and resume them.

Everything is read back from files on each call, so a restarted server finds every job again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..config import sibling
from ..errors import ConfigError, MpdistillError
from ..logs import RedactFilter
from ..report.status import LIVE_STATES, live_state, pid_alive, read_status
from ..state.files import atomic_write
from ..state.stopfile import write_stop
from .auth import ServeSettings
from .submit import new_job_id, prepare_job
from .views import public_status

log = logging.getLogger(__name__)

CONSOLE_TAIL_BYTES = 4000


class JobNotFoundError(MpdistillError):
    """No job or run has this id."""


class JobStateError(MpdistillError):
    """The job is not in a state that allows this (stop a finished job, resume a running one)."""


class JobStore:
    """Jobs as folders: `<jobs>/<id>/job.json`, the config, `console.log`, `exit.json`."""

    def __init__(self, settings: ServeSettings) -> None:
        self.root = Path(settings.jobs_dir)
        self.watched = settings.watched
        self._children: dict[str, subprocess.Popen] = {}

    # ---- submitting and controlling ---------------------------------------------------------

    def submit(self, body: bytes, content_type: str | None) -> dict:
        """Check the job like the CLI would (ConfigError names the key), then start it."""
        job_id = new_job_id()
        job_dir = self.root / job_id
        try:
            sub = prepare_job(body, content_type, job_dir)
        except ConfigError:
            _remove_dir(job_dir)
            raise
        record = {"id": job_id, "created_at": time.time(), **asdict(sub)}
        self._write_record(job_dir, record)
        self._start(job_id, job_dir)
        return self.view(job_id)

    def stop(self, job_id: str, now: bool = False) -> dict:
        """Ask the run to stop the way `--stop` does (a stop file); a job still starting gets SIGTERM."""
        record = self._record(job_id)
        status = _current(record, read_status(Path(record["status_file"])))
        if status and live_state(status) in LIVE_STATES + ("stale",):
            write_stop(Path(record["status_file"]), status["pid"], now)
        elif status is None and self._running(record):
            os.kill(record["pid"], signal.SIGTERM)   # still starting; graceful in mpdistill too
        else:
            raise JobStateError(f"job {job_id} is not running")
        return {**self.view(job_id), "stop_requested": True}

    def resume(self, job_id: str) -> dict:
        """Start a stopped job again with the same command: the CLI resumes from its files."""
        record = self._record(job_id)
        if record.get("source") == "discovered":
            raise JobStateError(f"{job_id} was started outside the server: rerun its command to resume it")
        if self._running(record):
            raise JobStateError(f"job {job_id} is still running")
        job_dir = self.root / job_id
        (job_dir / "exit.json").unlink(missing_ok=True)
        self._start(job_id, job_dir)
        return self.view(job_id)

    def _start(self, job_id: str, job_dir: Path) -> None:
        record = read_status(job_dir / "job.json")
        console = open(job_dir / "console.log", "ab")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "mpdistill.cli.child", str(job_dir.resolve())],
                                    stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)   # a signal to the server never reaches the job
        finally:
            console.close()
        self._children[job_id] = proc
        record.update(pid=proc.pid, started_at=time.time())
        self._write_record(job_dir, record)
        log.info("job %s started (pid %d): mpdistill %s", job_id, proc.pid, " ".join(record["argv"]))

    # ---- reading ----------------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every job and run the server can see, newest jobs first, then discovered runs."""
        self._reap()
        jobs = sorted((p.parent.name for p in self.root.glob("*/job.json")), reverse=True) if self.root.is_dir() else []
        return jobs + [rid for rid, _ in self._discovered(jobs)]

    def view(self, job_id: str) -> dict:
        """A job as the API shows it: state, exit code, the (public) status JSON, file paths."""
        self._reap()
        record = self._record(job_id)
        status = read_status(Path(record["status_file"]))
        exit_code = self._exit_code(record)
        return {
            "id": job_id, "source": record.get("source", "api"), "kind": record.get("kind", "run"),
            "name": record.get("name") or (status or {}).get("run"), "state": self._state(record, status, exit_code),
            "exit_code": exit_code, "created_at": record.get("created_at"), "pid": record.get("pid"),
            "status": public_status(status) if status else None, "config": record.get("config"),
            "files": {k: record.get(k) for k in ("status_file", "summary_file", "output")},
        }

    def summary(self, job_id: str) -> dict | None:
        path = Path(self._record(job_id)["summary_file"])
        data = read_status(path)    # any JSON object file
        return public_status(data) if data is not None else None

    def console_tail(self, job_id: str) -> str:
        """The end of the job's console output, with anything shaped like a key masked."""
        path = self.root / job_id / "console.log"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - CONSOLE_TAIL_BYTES))
                return RedactFilter().redact(f.read().decode("utf-8", "replace"))
        except OSError:
            return ""

    def _state(self, record: dict, status: dict | None, exit_code: int | None) -> str:
        running = self._running(record)
        if _current(record, status) is not None:
            state = live_state(status)
            if state == "crashed" and exit_code is not None:
                return "failed"
            return state
        if running:
            return "starting"
        if exit_code is not None:
            return "finished" if exit_code == 0 else "failed"
        return "unknown" if record.get("source") == "discovered" else "crashed"

    def _running(self, record: dict) -> bool:
        if record.get("source") == "discovered":
            return False
        child = self._children.get(record["id"])
        if child is not None:
            return child.poll() is None
        return pid_alive(record.get("pid")) and self._exit_code(record) is None

    def _exit_code(self, record: dict) -> int | None:
        child = self._children.get(record["id"])
        if child is not None:   # our child: its own exit status (exit.json comes just before it exits)
            return child.poll()
        if record.get("source") == "discovered":
            return None
        data = read_status(self.root / record["id"] / "exit.json")
        return data.get("code") if data else None

    def _reap(self) -> None:
        """Collect exited children (a zombie would still look alive)."""
        for child in list(self._children.values()):
            child.poll()

    def _record(self, job_id: str) -> dict:
        if "/" in job_id or job_id.startswith("."):
            raise JobNotFoundError(f"no job {job_id!r}")
        data = read_status(self.root / job_id / "job.json")
        if data is not None:
            return data
        for rid, path in self._discovered(()):
            if rid == job_id:
                return {"id": rid, "source": "discovered", "status_file": str(path), "output": None,
                        "summary_file": _summary_beside(path)}
        raise JobNotFoundError(f"no job {job_id!r}")

    def _discovered(self, jobs) -> list[tuple[str, Path]]:
        """Status files under the watched folders that no job of ours owns."""
        owned = {str(Path(r["status_file"])) for r in (read_status(self.root / j / "job.json") for j in jobs) if r}
        found, seen = [], set()
        for folder in self.watched:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*_status.json")):
                resolved = str(path.resolve())
                if resolved in owned or resolved in seen:
                    continue
                seen.add(resolved)
                found.append(("run-" + hashlib.sha1(resolved.encode()).hexdigest()[:10], Path(resolved)))
        return found

    @staticmethod
    def _write_record(job_dir: Path, record: dict) -> None:
        atomic_write(job_dir / "job.json", json.dumps(record, indent=1, default=str).encode(), mode=0o600)


def _current(record: dict, status: dict | None) -> dict | None:
    """The status, unless it is left from before the job's latest start (a resumed job not yet running)."""
    if status is None or (record.get("started_at") or 0) > (status.get("updated_at") or 0) + 1:
        return None
    return status


def _summary_beside(status_file: Path) -> str | None:
    """A CLI run's summary: beside the output its status file names."""
    status = read_status(status_file) or {}
    return str(sibling(Path(status["output"]), ".summary.json")) if status.get("output") else None


def _remove_dir(job_dir: Path) -> None:
    for child in job_dir.glob("*"):
        child.unlink(missing_ok=True)
    try:
        job_dir.rmdir()
    except OSError:
        pass

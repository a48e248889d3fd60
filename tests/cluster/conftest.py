"""Fixtures of the cluster tests: a fast mock server, a 1,000-row input, and the real engines.

Slurm and Ray are started once per session (see `engines`); without them the tests skip, except
when CI=true, where a missing engine is a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clean_env
from .engines import Ray, Slurm

ROWS = 1000   # 250 rows a shard of 4: a few seconds each, long enough to be killed mid-run
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing_engine(what: str):
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true (.ci/run installs it)")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="module")
def fast_server():
    """A mock endpoint with some latency: at -p 2 -c 2 a 250-row shard runs ~2.5 s, long enough to be killed mid-run."""
    from mpdistill.mock.server import MockServer
    with MockServer(latency_ms=40) as server:
        yield server


@pytest.fixture
def job_input(tmp_path) -> Path:
    """1,000 rows: most with an explicit id, some known only by their line number."""
    path = tmp_path / "input.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, ROWS + 1):
            row = {"prompt": f"row {i}"} if i % 5 == 0 else {"id": f"r{i}", "prompt": f"row {i}"}
            f.write(json.dumps(row) + "\n")
    return path


def submit_args(job_input: Path, outdir: Path, url: str, shards: int, executor: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mpdistill", "submit", "-i", str(job_input), "-o", str(outdir),
            "--shards", str(shards), "--executor", executor, "-m", "mock-model", "-p", "2", "-c", "2",
            "--base-url", url, "--checkpoint-interval", "20", "--retry-base-delay", "0.05", *extra]


def cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `python -m mpdistill ARGS` and return the finished process."""
    return subprocess.run([sys.executable, "-m", "mpdistill", *args], capture_output=True, text=True,
                          env=env or cluster_env(), timeout=timeout)


def cluster_env(**extra: str) -> dict:
    return clean_env(OPENAI_API_KEY="sk-test-cluster-0001", **extra)


def merged_ids(outdir: Path) -> list[str]:
    """Ids of the merged output, in file order (merging first)."""
    done = cli("merge", str(outdir))
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["id"] for line in (outdir / "results.jsonl").read_text().splitlines()]


def expected_ids() -> list[str]:
    return [str(i) if i % 5 == 0 else f"r{i}" for i in range(1, ROWS + 1)]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm for the session (needs root, slurm-wlm and munge)."""
    if shutil.which("slurmctld") is None or os.geteuid() != 0:
        missing_engine("Slurm (apt-get install slurm-wlm munge, as root)")
    engine = Slurm(tmp_path_factory.mktemp("slurm")).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray instance for the session (needs the [ray] extra)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        missing_engine('Ray (pip install -e ".[ray]")')
    engine = Ray(tmp_path_factory.mktemp("ray"), cpus=8).start()
    yield engine
    engine.stop()

"""The API pool end to end: many endpoints, rejected keys, 429s, rate limits, outages, retry budgets."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mpdistill.provider.endpoint import mask_key
from mpdistill.mock.server import MockServer
from tests.conftest import MODES, Workdir, clean_env, read_jsonl, write_jsonl

KEY_REJECTED = "sk-test-rejected-0401"      # given only through api_key_env
KEY_LIMITED = "sk-test-limited-0429"
KEY_SLOW = "sk-test-slow-0300"
KEY_HEALTHY = "sk-test-healthy-0200"
EXIT_ABORTED = 75


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)]


def _ids(n: int) -> list[str]:
    return sorted(f"r{i}" for i in range(n))


def _endpoints_file(wd: Workdir, *entries: dict) -> Path:
    path = wd.root / "endpoints.yaml"
    path.write_text(yaml.safe_dump({"endpoints": list(entries)}))
    return path


def _command(wd: Workdir, *extra: str, processes: int) -> list[str]:
    return [sys.executable, "-m", "mpdistill", *wd.args(*extra, processes=processes)]


def _start(wd: Workdir, *extra: str, env: dict | None = None, processes: int = 8) -> subprocess.Popen:
    return subprocess.Popen(_command(wd, *extra, processes=processes), cwd=wd.root,
                            env=clean_env(**(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(wd: Workdir, *extra: str, env: dict | None = None, processes: int = 8,
         timeout: float = 60) -> subprocess.CompletedProcess:
    proc = _start(wd, *extra, env=env, processes=processes)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _wait_for_rows(wd: Workdir, proc: subprocess.Popen, count: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while len(read_jsonl(wd.output)) < count and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if len(read_jsonl(wd.output)) < count:
        proc.kill()
        raise AssertionError(f"fewer than {count} rows; stderr: {proc.communicate(timeout=30)[1]}")


def _files_holding(root: Path, secret: str, skip: tuple[Path, ...] = ()) -> list[str]:
    return [str(p) for p in root.rglob("*")
            if p.is_file() and p not in skip and secret.encode() in p.read_bytes()]


def _by_name(endpoints: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in endpoints}


def _status(wd: Workdir) -> dict:
    (path,) = wd.checkpoints.glob("*_status.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("mode", MODES)
def test_four_endpoints_rejected_limited_slow_healthy_finish_every_row(tmp_path, mode):
    """A 401, an always-429, a slow and a healthy endpoint: every row once, the 401 key disabled and never shown."""
    with MockServer(fixed_status=401) as rejected, MockServer(fixed_status=429) as limited, \
            MockServer(latency_ms=300) as slow, MockServer() as healthy:
        wd = Workdir(tmp_path, None, mode)
        write_jsonl(wd.input, _rows(200))
        endpoints = _endpoints_file(
            wd, {"name": "rejected", "base_url": rejected.url, "api_key_env": "REJECTED_KEY"},
            {"name": "limited", "base_url": limited.url, "api_key": KEY_LIMITED},
            {"name": "slow", "base_url": slow.url, "api_key": KEY_SLOW},
            {"name": "healthy", "base_url": healthy.url, "api_key": KEY_HEALTHY})
        proc = _run(wd, "--endpoints", str(endpoints), env={"REJECTED_KEY": KEY_REJECTED})
        assert proc.returncode == 0, proc.stderr
        assert rejected.stats()["requests"] >= 1 and limited.stats()["by_status"].get(429, 0) >= 1
    results = wd.results()
    assert sorted(r["id"] for r in results) == _ids(200) and wd.failures() == []
    assert {r["endpoint"] for r in results} <= {"slow", "healthy"}
    summary = json.loads(wd.summary.read_text())
    assert summary["succeeded"] == 200 and summary["failed"] == 0
    for table in (_by_name(summary["endpoints"]), _by_name(_status(wd)["endpoints"])):
        assert table["rejected"]["disabled"] and "401" in table["rejected"]["disabled_reason"]
        assert table["rejected"]["key"] == mask_key(KEY_REJECTED) and table["rejected"]["in_flight"] == 0
        assert not table["healthy"]["disabled"] and table["healthy"]["ok"] > 0
        assert table["limited"]["rate_limited"] >= 1 and table["limited"]["ok"] == 0
    (log_file,) = (wd.root / "logs").glob("*.log")
    assert log_file.read_text().count("disabled for this run") == 1   # logged once
    for key in (KEY_REJECTED, KEY_LIMITED, KEY_SLOW, KEY_HEALTHY):
        assert _files_holding(tmp_path, key, skip=(endpoints,)) == [], key
        assert key not in proc.stderr and key not in proc.stdout


@pytest.mark.parametrize("mode", MODES)
def test_rpm_set_three_times_too_high_converges_with_few_429s(tmp_path, mode):
    """--rpm 3x the server's limit: every row done, and AIMD keeps 429s to a small share of requests."""
    rps = 40
    with MockServer(rate_limit_rps=rps) as server:
        wd = Workdir(tmp_path, server.url, mode)
        write_jsonl(wd.input, _rows(200))     # 5 s at the limit: the opening 429s are long past
        proc = _run(wd, "--rpm", str(3 * rps * 60), processes=16)
        assert proc.returncode == 0, proc.stderr
        stats = server.stats()
    assert sorted(r["id"] for r in wd.results()) == _ids(200) and wd.failures() == []
    share = stats["by_status"].get(429, 0) / stats["requests"]
    summary = json.loads(wd.summary.read_text())
    print(f"\n429 share {share:.3f} ({stats['by_status']}), rows/s {summary['rows_per_s']} "
          f"= {summary['rows_per_s'] / rps:.2f} x the server's limit")
    assert share <= 0.10


@pytest.mark.parametrize("mode", MODES)
def test_short_outage_pauses_and_the_run_finishes(tmp_path, mode):
    """The only endpoint goes down mid-run and comes back within --max-outage: no error rows, exit 0."""
    with MockServer(latency_ms=20) as server:
        wd = Workdir(tmp_path, server.url, mode)
        write_jsonl(wd.input, _rows(300))
        proc = _start(wd, "--max-outage", "30", processes=4)
        _wait_for_rows(wd, proc, 30)
        server.pause()
        time.sleep(2.5)
        server.resume()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    ids = [r["id"] for r in wd.results()]
    assert sorted(ids) == _ids(300) and wd.failures() == []


@pytest.mark.parametrize("mode", MODES)
def test_long_outage_stops_with_checkpoint_and_the_rerun_completes(tmp_path, mode):
    """An outage longer than --max-outage exits 75 with a checkpoint and no failed rows; the rerun finishes."""
    with MockServer(latency_ms=20) as server:
        wd = Workdir(tmp_path, server.url, mode)
        write_jsonl(wd.input, _rows(300))
        proc = _start(wd, "--max-outage", "2", processes=4)
        _wait_for_rows(wd, proc, 30)
        server.pause()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == EXIT_ABORTED, err
        assert "reachable again" not in err  # the outage clock does not restart when a cooldown ends
        assert "unreachable" in err
        first = [r["id"] for r in wd.results()]
        assert 30 <= len(first) < 300 and len(set(first)) == len(first)
        assert wd.failures() == [] and list(wd.checkpoints.glob("*_checkpoint.pkl"))
        server.resume()
        proc = _run(wd, processes=4)
    assert proc.returncode == 0, proc.stderr
    ids = [r["id"] for r in wd.results()]
    assert sorted(ids) == _ids(300) and wd.failures() == []


@pytest.mark.parametrize("mode", MODES)
def test_every_key_rejected_stops_without_failing_rows(tmp_path, mode):
    """Every key 401: exit 75 with a message naming no key; output and checkpoint kept, no error rows."""
    good, bad = "sk-test-accepted-0001", ("sk-test-refused-0002", "sk-test-refused-0003")
    with MockServer(api_keys={good}) as server:
        wd = Workdir(tmp_path, None, mode)
        write_jsonl(wd.input, _rows(120))
        proc = _run(wd, "--base-url", server.url, "--api-key", good, "--limit", "40")
        assert proc.returncode == 0, proc.stderr
        before = wd.output.read_bytes()
        endpoints = _endpoints_file(wd, *({"name": f"api_{i}", "base_url": server.url, "api_key": key}
                                          for i, key in enumerate(bad, 1)))
        proc = _run(wd, "--endpoints", str(endpoints))
    assert proc.returncode == EXIT_ABORTED, proc.stderr
    assert "every key" in proc.stderr and "disabled" in proc.stderr
    assert wd.output.read_bytes() == before and len(wd.results()) == 40
    assert wd.failures() == [] and list(wd.checkpoints.glob("*_checkpoint.pkl"))
    for key in (good, *bad):
        assert key not in proc.stderr
        assert _files_holding(tmp_path, key, skip=(endpoints,)) == [], key


def test_openai_api_keys_spread_and_pool_selects(tmp_path):
    """OPENAI_API_KEYS=k1,k2,k3 spreads requests over the three keys; --pool key_1,key_3 uses only those."""
    keys = ("sk-test-0001", "sk-test-0002", "sk-test-0003")
    env = {"OPENAI_API_KEYS": ",".join(keys)}
    with MockServer(api_keys=set(keys), latency_ms=10) as server:
        wd = Workdir(tmp_path / "all", None)
        write_jsonl(wd.input, _rows(60))
        proc = _run(wd, "--base-url", server.url, env=env, processes=6)
        assert proc.returncode == 0, proc.stderr
        table = _by_name(json.loads(wd.summary.read_text())["endpoints"])
        assert sorted(table) == ["key_1", "key_2", "key_3"]
        assert all(e["requests"] > 0 and e["ok"] > 0 for e in table.values())
        pooled = Workdir(tmp_path / "pool", None)
        write_jsonl(pooled.input, _rows(60))
        proc = _run(pooled, "--base-url", server.url, "--pool", "key_1,key_3", env=env, processes=6)
        assert proc.returncode == 0, proc.stderr
    table = _by_name(json.loads(pooled.summary.read_text())["endpoints"])
    assert sorted(table) == ["key_1", "key_3"] and all(e["requests"] > 0 for e in table.values())
    assert {r["endpoint"] for r in pooled.results()} == {"key_1", "key_3"}
    assert sorted(r["id"] for r in pooled.results()) == _ids(60)


def test_row_that_always_fails_exhausts_its_retry_budget_with_history(tmp_path):
    """An always-500 row is tried 1 + --max-retries times; its error line lists status, endpoint and delay."""
    with MockServer() as server:
        wd = Workdir(tmp_path, None)
        write_jsonl(wd.input, [{"id": "srv", "prompt": "[[fail:500:*]] y"}, *_rows(10)])
        endpoints = _endpoints_file(wd, {"name": "primary", "base_url": server.url, "api_key": KEY_HEALTHY})
        proc = _run(wd, "--endpoints", str(endpoints), "--max-retries", "3", processes=2)
    assert proc.returncode == 3, proc.stderr
    (failure,) = wd.failures()
    assert failure["id"] == "srv" and failure["attempts"] == 4 and failure["status"] == 500
    history = failure["history"]
    assert [h["attempt"] for h in history] == [1, 2, 3, 4]
    assert all(h["status"] == 500 and h["endpoint"] == "primary" for h in history)
    assert all(h["retry_in_s"] > 0 for h in history[:-1]) and history[-1]["retry_in_s"] is None
    assert sorted(r["id"] for r in wd.results()) == _ids(10)
    assert KEY_HEALTHY not in wd.errors.read_text()

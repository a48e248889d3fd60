"""`mpdistill serve`'s job API: through Starlette's test client and a real uvicorn on 127.0.0.1:0,
against the real mock endpoint; jobs are real child processes."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from mpdistill.errors import ConfigError
from mpdistill.mock.server import MockServer
from mpdistill.serve.app import create_app
from mpdistill.serve.auth import ServeSettings
from tests.conftest import Workdir, read_jsonl, write_jsonl
from tests.integration.servekit import ENDED, LiveServer, ended, job_config, prepare_env, wait_job

KEY = "sk-test-serve-000001"


@pytest.fixture
def env(monkeypatch, tmp_path):
    prepare_env(monkeypatch, tmp_path)
    return tmp_path


def settings(tmp_path, **kw) -> ServeSettings:
    return ServeSettings(watch=(str(tmp_path / "ck"),), jobs_dir=str(tmp_path / "jobs"), **kw)


def test_submitted_job_runs_to_the_end_and_no_response_holds_a_key(env, mock_server):
    """POST a JSON run config, poll it to `finished`: every row once, summary served, no key anywhere."""
    with TestClient(create_app(settings(env))) as client:
        res = client.post("/api/jobs", json=job_config(env, mock_server.url, 6, processes=2))
        assert res.status_code == 201, res.text
        job_id = res.json()["id"]
        view = wait_job(lambda j: client.get(f"/api/jobs/{j}").json(), job_id, ended)
        assert view["state"] == "finished" and view["exit_code"] == 0, client.get(f"/api/jobs/{job_id}/console").text
        assert view["status"]["done"] == 6 and view["status"]["ok"] == 6
        ids = [r["id"] for r in read_jsonl(env / "out" / "job.jsonl")]
        assert sorted(ids) == sorted(f"job-{i}" for i in range(6))
        summary = client.get(f"/api/jobs/{job_id}/summary").json()
        assert summary["succeeded"] == 6
        listing = client.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in listing] == [job_id]   # its status file is not listed twice
        texts = [client.get(p).text for p in ("/api/jobs", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/summary",
                                              "/api/dashboard", "/metrics")]
        assert all(KEY not in t and "sk-" not in t for t in texts)
        from prometheus_client.parser import text_string_to_metric_families
        samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
                   for fam in text_string_to_metric_families(texts[-1]) for x in fam.samples}
        assert samples[("mpdistill_rows_done_total", (("run", "job"),))] == 6
        assert samples[("mpdistill_requests_total", (("endpoint", "default"), ("run", "job"), ("status_class", "2xx")))] == 6
        assert view["config"]["api_key"] == "(hidden)"


@pytest.mark.parametrize("body, key", [
    ({"procesess": 2}, "procesess"),
    ({"processes": "many"}, "processes"),
    ({"processes": 0}, "processes"),
    ({"output": "o.jsonl"}, "input"),
    ({"input": "missing.jsonl"}, "input"),
    ({"trace": "jaeger"}, "trace"),
])
def test_bad_run_config_is_422_naming_the_key(env, body, key):
    """A run config the CLI would refuse is a 422 whose message names the key; no job is left behind."""
    if "input" not in body and key != "input":
        body = {"input": str(write_jsonl(env / "in.jsonl", [{"prompt": "x"}])), **body}
    with TestClient(create_app(settings(env))) as client:
        res = client.post("/api/jobs", json=body)
        assert res.status_code == 422 and key in res.json()["detail"], res.text
        assert client.get("/api/jobs").json()["jobs"] == []


def test_bad_task_yaml_and_bad_json_are_422(env):
    """A task YAML with an unknown key, and a body that is not JSON, are 422 with a clear message."""
    with TestClient(create_app(settings(env))) as client:
        res = client.post("/api/jobs", content="task_type: distill\noutput_dir: o\nmodels: [m]\nprocesess: 3\n",
                          headers={"Content-Type": "application/yaml"})
        assert res.status_code == 422 and "procesess" in res.json()["detail"], res.text
        res = client.post("/api/jobs", content="{not json", headers={"Content-Type": "application/json"})
        assert res.status_code == 422 and "JSON" in res.json()["detail"]


def test_token_is_required_off_loopback_and_checked(env):
    """Off loopback a token is mandatory; then every API call needs it (401 otherwise), the page does not."""
    with pytest.raises(ConfigError, match="token"):
        create_app(settings(env, host="0.0.0.0"))
    token = "s3cret-token-for-tests"
    with TestClient(create_app(settings(env, host="0.0.0.0", token=token))) as client:
        for path in ("/api/jobs", "/metrics", "/openapi.json", "/api/dashboard"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer wrong-token-xx"}).status_code == 401
            assert client.get(path, headers={"Authorization": token}).status_code == 401
            assert client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.post("/api/jobs", json={}).status_code == 401
        assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
        assert token not in client.get("/").text


def test_openapi_describes_the_job_api(env):
    """/openapi.json lists every job route."""
    with TestClient(create_app(settings(env))) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/stop", "/api/jobs/{job_id}/summary",
                 "/metrics"):
        assert path in paths
    assert "application/yaml" in paths["/api/jobs"]["post"]["requestBody"]["content"]


def test_cli_runs_in_watched_folders_are_listed_with_their_summary(env, mock_server):
    """A run started from the CLI is found by its status file: state, figures and summary."""
    wd = Workdir(env, mock_server.url)
    write_jsonl(wd.input, [{"id": f"c{i}", "prompt": "hi"} for i in range(3)])
    assert wd.run("--checkpoint-dir", str(env / "ck"), processes=1).returncode == 0
    with TestClient(create_app(settings(env))) as client:
        jobs = client.get("/api/jobs").json()["jobs"]
        assert len(jobs) == 1 and jobs[0]["source"] == "discovered" and jobs[0]["state"] == "finished"
        assert jobs[0]["status"]["done"] == 3
        assert client.get(f"/api/jobs/{jobs[0]['id']}/summary").json()["succeeded"] == 3
        assert client.post(f"/api/jobs/{jobs[0]['id']}/stop").status_code == 409
        assert client.get("/api/jobs/nope").status_code == 404


def test_real_server_stops_a_job_mid_run_resumes_it_and_finds_it_after_a_restart(env):
    """Over real HTTP: stop a running job (graceful), resume it, every row exactly once; a new
    server process state (a fresh app) finds the job again by its files."""
    with MockServer(latency_ms=250) as mock, LiveServer(settings(env)) as server:
        status, view = server.call("POST", "/api/jobs", job_config(env, mock.url, 12))
        assert status == 201, view
        job_id = view["id"]
        get = lambda j: server.call("GET", f"/api/jobs/{j}")[1]
        view = wait_job(get, job_id, lambda v: (v["status"] or {}).get("done", 0) >= 2 or v["state"] in ENDED)
        assert view["state"] == "running", view
        assert server.call("POST", f"/api/jobs/{job_id}/stop")[0] == 202
        stopped = wait_job(get, job_id, ended)
        assert stopped["state"] == "stopped" and stopped["exit_code"] == 0, stopped
        assert 0 < stopped["status"]["done"] < 12
        again = server.call("POST", f"/api/jobs/{job_id}/stop")
        assert again[0] == 409, again
        resumed = server.call("POST", f"/api/jobs/{job_id}/resume")
        assert resumed[0] == 202, resumed
        done = wait_job(get, job_id, ended)
        assert done["state"] == "finished" and done["exit_code"] == 0, done
    ids = [r["id"] for r in read_jsonl(env / "out" / "job.jsonl")]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(12))
    with TestClient(create_app(settings(env))) as client:
        again = wait_job(lambda j: client.get(f"/api/jobs/{j}").json(), job_id,
                         ended)
        assert again["state"] == "finished" and again["status"]["done"] == 12
        assert json.dumps(again).count(KEY) == 0


def test_task_yaml_job_runs_with_its_models(env, mock_server):
    """A task YAML posted as application/yaml runs like `run-task`: named after the job, summary served."""
    src = write_jsonl(env / "t.jsonl", [{"id": f"t{i}", "prompt": "hi"} for i in range(4)])
    task = (f"task_type: distill\ninput: {src}\noutput_dir: {env / 'taskout'}\nprocesses: 1\n"
            f"models:\n  - {{name: tm, model: mock-model, base_url: '{mock_server.url}'}}\n")
    with TestClient(create_app(settings(env))) as client:
        res = client.post("/api/jobs", content=task, headers={"Content-Type": "application/yaml"})
        assert res.status_code == 201, res.text
        job_id = res.json()["id"]
        view = wait_job(lambda j: client.get(f"/api/jobs/{j}").json(), job_id, ended)
        assert view["state"] == "finished" and view["kind"] == "task", client.get(f"/api/jobs/{job_id}/console").text
        assert view["status"]["run"] == job_id and view["status"]["done"] == 4
        assert client.get(f"/api/jobs/{job_id}/summary").json()["succeeded"] == 4
    assert len(read_jsonl(env / "taskout" / "tm" / "results.jsonl")) == 4

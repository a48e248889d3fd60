"""Pure parts of cluster jobs: byte-range plans, range sources, shard identity, job.json, merge refusal."""
from __future__ import annotations

import json

import pytest

from mpdistill.cluster.job import create_job, load_job
from mpdistill.cluster.merge import merge_job
from mpdistill.cluster.plan import plan_ranges
from mpdistill.cluster.shard import shard_identity
from mpdistill.config import build_config
from mpdistill.errors import ConfigError
from mpdistill.inputs.jsonl import JsonlSource, LineRange


def _input(tmp_path, lines):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def test_ranges_start_at_line_starts_and_cover_every_line_once(tmp_path):
    """Every line (also a long one, a blank one and a last one without newline) falls in exactly one shard."""
    lines = [json.dumps({"id": f"a{i}", "prompt": "x" * (i * 37 % 300)}).encode() + b"\n" for i in range(97)]
    lines[40] = b"\n"
    lines.append(b'{"id": "last", "prompt": "no newline"}')
    path = _input(tmp_path, lines)
    data = path.read_bytes()
    for shards in (1, 3, 8, 150):
        plan = plan_ranges(path, shards)
        assert len(plan) == shards and plan[0][0].begin == 0 and plan[-1][0].end == len(data)
        keys = []
        for rng, count in plan:
            assert rng.begin == 0 or data[rng.begin - 1:rng.begin] == b"\n"
            src = JsonlSource(path, byte_range=rng)
            got = [row.key for row in src.rows()]
            assert len(got) == count == src.count()
            keys += got
        assert keys == list(range(1, len(lines) + 1))


def test_range_source_keeps_input_line_numbers_and_ids(tmp_path):
    """A shard's rows carry their line numbers in the whole file; id-less rows get that number as id."""
    path = _input(tmp_path, [json.dumps({"prompt": f"p{i}"}).encode() + b"\n" for i in range(10)])
    rng = plan_ranges(path, 2)[1][0]
    rows = list(JsonlSource(path, byte_range=rng).rows())
    assert [r.key for r in rows] == list(range(6, 11)) and [r.id for r in rows] == [str(k) for k in range(6, 11)]
    assert JsonlSource(path, byte_range=LineRange(rng.begin, rng.end, rng.first_line)).start == 6


@pytest.mark.parametrize("spec,env,index", [
    ("2/4", {}, 2), ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, 3),
    ("auto", {"JOB_COMPLETION_INDEX": "0"}, 0)])
def test_shard_identity_from_flag_or_engine_environment(spec, env, index):
    """--shard I/N, Slurm's array task id and Kubernetes' completion index name the shard."""
    assert shard_identity(spec, env, 4) == index


@pytest.mark.parametrize("spec,env", [("4/4", {}), ("1/3", {}), ("x", {}), ("auto", {}),
                                      ("auto", {"JOB_COMPLETION_INDEX": "9"}),
                                      ("auto", {"SLURM_ARRAY_TASK_ID": "one"})])
def test_bad_shard_identity_is_a_clear_error(spec, env):
    """An index out of range, a wrong N or no index at all is a ConfigError, not a crash."""
    with pytest.raises(ConfigError):
        shard_identity(spec, env, 4)


def test_job_json_has_no_secrets_and_refuses_another_job(tmp_path):
    """job.json keeps the config minus keys; the same folder refuses a job with other settings."""
    path = _input(tmp_path, [b'{"prompt": "a"}\n'] * 20)
    cfg = build_config({"input": str(path), "model": "m", "api_key": "sk-secret-zzzz9999", "processes": 2}, env={})
    job, created = create_job(cfg, tmp_path / "job", 4)
    text = (tmp_path / "job" / "job.json").read_text()
    assert created and "sk-secret" not in text and json.loads(text)["shards"] == 4
    assert load_job(tmp_path / "job").fingerprint() == job.fingerprint()
    assert create_job(cfg, tmp_path / "job", 4)[1] is False
    with pytest.raises(ConfigError, match="another job"):
        create_job(build_config({"input": str(path), "model": "other"}, env={}), tmp_path / "job", 4)
    with pytest.raises(ConfigError, match="follow"):
        create_job(build_config({"input": str(path), "follow": True}, env={}), tmp_path / "job2", 2)


def test_shard_config_reads_its_range_and_keys_from_the_environment(tmp_path):
    """A shard's config has its own files and byte range; the key comes from the shard's environment."""
    path = _input(tmp_path, [b'{"prompt": "a"}\n'] * 20)
    job, _ = create_job(build_config({"input": str(path), "model": "m"}, env={}), tmp_path / "job", 4)
    cfg = job.shard_config(2, env={"OPENAI_API_KEY": "sk-from-env"})
    assert cfg.api_key == "sk-from-env" and cfg.input_range[2] == 11
    assert cfg.output.endswith("shards/00002/results.jsonl") and cfg.checkpoint_dir.endswith("shards/00002")


def test_merge_refuses_unfinished_shards_by_name_and_partial_merges_in_order(tmp_path):
    """merge names the unfinished shards; --partial merges what is there, in input order, each row once."""
    path = _input(tmp_path, [json.dumps({"id": f"r{i}", "prompt": "p"}).encode() + b"\n" for i in range(1, 9)])
    job, _ = create_job(build_config({"input": str(path), "model": "m"}, env={}), tmp_path / "job", 2)
    part = job.shard(0)
    part.dir.mkdir(parents=True)
    rows = [{"line": k, "id": f"r{k}", "answer": "a"} for k in (3, 1, 2, 2)]
    part.output.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"line": 4, "id"')
    part.errors.write_text(json.dumps({"line": 4, "id": "r4", "reason": "x"}) + "\n"
                           + json.dumps({"line": 1, "id": "r1", "reason": "old"}) + "\n")
    part.done.write_text("{}")
    with pytest.raises(ConfigError, match="00001"):
        merge_job(job.dir)
    summary = merge_job(job.dir, partial=True)
    merged = [json.loads(l)["line"] for l in (job.dir / "results.jsonl").read_text().splitlines()]
    errors = [json.loads(l)["line"] for l in (job.dir / "results.errors.jsonl").read_text().splitlines()]
    assert merged == [1, 2, 3] and errors == [4]
    assert summary["duplicates_dropped"] == 1 and summary["partial"] and summary["unfinished_shards"] == [1]

"""Task and model YAML configs: loading, model lookup, precedence, errors naming file and key, env files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpdistill.config import build_config
from mpdistill.errors import ConfigError
from mpdistill.tools.tasks import (ModelJob, cost, endpoint_for, layer_job, load_env_file, load_model,
                             load_task)

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with configs/models/ and configs/tasks/, the working directory set to it."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs/models/alpha.yaml", "model: alpha-1\ntemperature: 0.5\nmax_tokens: 64\n")
    write(tmp_path / "configs/models/beta.yaml",
          "name: beta\nmodel: beta-2\nbase_url: http://127.0.0.1:9/v1\napi_key_env: BETA_KEY\n"
          "top_p: 0.9\nstop: [END]\nextra_body: {top_k: 5}\nsystem: be brief\n"
          "price_per_million_input: 1.0\nprice_per_million_output: 2.0\n")
    return tmp_path


def distill(tmp_path: Path, extra: str = "", models: str = "[alpha, beta]") -> Path:
    return write(tmp_path / "configs/tasks/t.yaml",
                 f"task_type: distill\ninput: data/in.jsonl\noutput_dir: out\nmodels: {models}\n{extra}")


def test_distill_task_loads_models_and_settings(project):
    """A distill task yields one ModelJob per model and the RunConfig values it sets."""
    task = load_task(distill(project, "processes: 8\nlimit: 5\nrun_name: r1\nsystem: sys\ntimeout: 9\n"))
    assert [j.alias for j in task.models] == ["alpha", "beta"]
    alpha, beta = task.models
    assert alpha.model == "alpha-1" and alpha.params == {"temperature": 0.5, "max_tokens": 64}
    assert beta.params == {"top_p": 0.9, "stop": ["END"], "extra_body": {"top_k": 5}}
    assert beta.api_key_env == "BETA_KEY" and beta.system == "be brief"
    assert task.settings == {"processes": 8, "limit": 5, "run_name": "r1", "system": "sys",
                             "timeout": 9.0, "input": "data/in.jsonl",
                             "output": str(Path("out") / "{model}" / "results.jsonl")}
    assert task.output_for("beta") == Path("out/beta/results.jsonl")


def test_model_lookup_next_to_tasks_folder_wins_over_cwd(project, tmp_path):
    """A name is looked up in <task dir>/../models/ before configs/models/ of the working directory."""
    other = tmp_path / "elsewhere"
    write(other / "models/alpha.yaml", "model: alpha-local\n")
    task_file = write(other / "tasks/t.yaml", "task_type: distill\noutput_dir: o\nmodels: [alpha, beta]\n")
    task = load_task(task_file)
    assert [j.model for j in task.models] == ["alpha-local", "beta-2"]


def test_model_by_path_and_inline_mapping(project):
    """Models may be given as a path (relative to the task file) or as an inline mapping."""
    write(project / "configs/tasks/my/gamma.yaml", "model: gamma-3\n")
    task = load_task(distill(project, models="[my/gamma.yaml, {name: inl, model: m-x, n: 2}]"))
    assert [(j.alias, j.model) for j in task.models] == [("gamma", "gamma-3"), ("inl", "m-x")]
    assert task.models[1].params == {"n": 2}


def test_precedence_cli_env_task_over_model_over_config_py(project, tmp_path):
    """CLI > env > task YAML > config.py for run values; CLI/task > model YAML > config.py per job."""
    task = load_task(distill(project, "processes: 8\nconcurrency: 3\n"))
    config_py = write(tmp_path / "config.py", "PROCESSES = 2\nCONCURRENCY = 1\nTIMEOUT = 7.0\n")
    cfg = build_config({"concurrency": 5}, env={"MPDISTILL_PROCESSES": "16"},
                       yaml_values=task.settings, config_py=config_py)
    assert (cfg.processes, cfg.concurrency, cfg.timeout) == (16, 5, 7.0)
    alpha = task.models[0]
    below = {"temperature": 0.1, "max_tokens": 999, "system": "from config.py"}
    layered = layer_job(alpha, above={"max_tokens": 32}, below=below)
    assert layered.params == {"temperature": 0.5, "max_tokens": 32}
    assert layered.system == "from config.py"
    assert layer_job(task.models[1], above={"system": "task"}).system == "task"
    assert layer_job(task.models[1], above={"system": None}).system == "be brief"


def test_unknown_key_in_task_names_file_and_key(project):
    """A misspelled task key is a ConfigError naming the task file and the key."""
    path = distill(project, "procesess: 3\n")
    with pytest.raises(ConfigError, match=r"t\.yaml.*'procesess'"):
        load_task(path)


def test_key_of_another_task_type_is_unknown(project):
    """A split key in a distill task is rejected, naming it."""
    with pytest.raises(ConfigError, match=r"t\.yaml.*'chunks'"):
        load_task(distill(project, "chunks: 3\n"))


def test_unknown_key_in_model_names_model_file(project):
    """A misspelled key in a model config names that model file and the key."""
    write(project / "configs/models/alpha.yaml", "model: a\ntemprature: 0.3\n")
    with pytest.raises(ConfigError, match=r"alpha\.yaml.*'temprature'"):
        load_task(distill(project))


@pytest.mark.parametrize("line, key", [
    ("temperature: hot", "temperature"), ("max_tokens: 1.5", "max_tokens"), ("n: true", "n"),
    ("stop: 3", "stop"), ("extra_body: [1]", "extra_body"), ("top_p: 2", "top_p"),
    ("api_key_env: 'not a var'", "api_key_env"), ("name: a/b", "name"),
])
def test_wrong_type_in_model_names_file_and_key(project, line, key):
    """A wrongly typed model value is a ConfigError naming the model file and the key."""
    write(project / "configs/models/alpha.yaml", f"model: a\n{line}\n")
    with pytest.raises(ConfigError, match=rf"alpha\.yaml.*'{key}'"):
        load_task(distill(project))


def test_wrong_type_in_task_names_file_and_key(project):
    """A wrongly typed task value (checked like a RunConfig field) names the task file and the key."""
    with pytest.raises(ConfigError, match=r"t\.yaml.*processes"):
        load_task(distill(project, "processes: many\n"))


def test_missing_files_name_file_and_key(project):
    """A missing task, model, endpoints or env file is a ConfigError naming the file and the key."""
    with pytest.raises(ConfigError, match=r"nope\.yaml.*not found"):
        load_task(project / "nope.yaml")
    with pytest.raises(ConfigError, match=r"t\.yaml: models\[2\].*'ghost'"):
        load_task(distill(project, models="[alpha, ghost]"))
    with pytest.raises(ConfigError, match=r"t\.yaml.*'endpoints'.*eps\.yaml"):
        load_task(distill(project, "endpoints: eps.yaml\n"))
    with pytest.raises(ConfigError, match=r"t\.yaml.*'env_file'.*\.env"):
        load_task(distill(project, "environment: {env_file: .env}\n"))


def test_bad_task_type_and_duplicate_aliases(project):
    """task_type must be known; two models with one alias would share an output folder."""
    with pytest.raises(ConfigError, match="task_type"):
        load_task(write(project / "x.yaml", "task_type: distil\n"))
    with pytest.raises(ConfigError, match="share the name 'alpha'"):
        load_task(distill(project, models="[alpha, {name: alpha, model: z}]"))


def test_endpoints_path_is_relative_to_task_file(project):
    """The endpoints file is resolved against the task's folder and handed out as endpoints_file."""
    eps = write(project / "configs/tasks/eps.yaml", "- {name: a, base_url: http://x/v1}\n")
    task = load_task(distill(project, "endpoints: eps.yaml\n"))
    assert task.endpoints == eps and task.settings["endpoints_file"] == str(eps)


def test_env_file_loads_without_override(project, monkeypatch):
    """environment.env_file is loaded with override=False: variables already set win."""
    write(project / "configs/tasks/keys.env", "BETA_KEY=sk-test-0002\nMPD_TEST_SET=from-file\n")
    monkeypatch.setenv("MPD_TEST_SET", "from-shell")
    monkeypatch.setenv("BETA_KEY", "placeholder")   # recorded, so teardown removes what the file sets
    monkeypatch.delenv("BETA_KEY")
    task = load_task(distill(project, "environment: {env_file: keys.env}\n"))
    assert load_env_file(task) == project / "configs/tasks/keys.env"
    assert os.environ["BETA_KEY"] == "sk-test-0002" and os.environ["MPD_TEST_SET"] == "from-shell"
    endpoint = endpoint_for(task.models[1])
    assert endpoint.base_url == "http://127.0.0.1:9/v1" and endpoint.models == ("beta-2",)
    assert endpoint.api_key == "sk-test-0002" and "sk-test" not in repr(endpoint)


def test_env_file_deleted_after_load_is_an_error(project):
    """load_env_file fails clearly when the env file went away after the task was read."""
    env = write(project / "configs/tasks/keys.env", "A=1\n")
    task = load_task(distill(project, "environment: {env_file: keys.env}\n"))
    env.unlink()
    with pytest.raises(ConfigError, match="env_file"):
        load_env_file(task)


def test_endpoint_for_needs_the_key_variable(project):
    """A model naming api_key_env whose variable is unset fails naming the model file and key."""
    beta = load_model(project / "configs/models/beta.yaml")
    with pytest.raises(ConfigError, match=r"beta\.yaml.*'api_key_env'.*BETA_KEY"):
        endpoint_for(beta, env={})
    assert endpoint_for(load_model(project / "configs/models/alpha.yaml"), env={}) is None


def test_split_and_merge_tasks(project):
    """Split and merge tasks carry their own keys and require theirs."""
    split = load_task(write(project / "s.yaml", "task_type: split\ninput: a.jsonl\nchunks: 4\nout_dir: c\n"))
    assert (split.input, split.chunks, split.out_dir) == (Path("a.jsonl"), 4, Path("c"))
    merge = load_task(write(project / "m.yaml", "task_type: merge\ndir: c\nmodels: [x]\nmerge_errors: true\n"))
    assert (merge.dir, merge.model_names, merge.merge_errors, merge.input) == (Path("c"), ("x",), True, None)
    with pytest.raises(ConfigError, match=r"s2\.yaml.*'chunks'"):
        load_task(write(project / "s2.yaml", "task_type: split\ninput: a\nchunks: 0\nout_dir: c\n"))
    with pytest.raises(ConfigError, match=r"m2\.yaml.*'merge_errors'"):
        load_task(write(project / "m2.yaml", "task_type: merge\ndir: c\nmerge_errors: maybe\n"))


def test_cost_uses_prices_per_million():
    """cost() prices tokens with the model's per-million prices; None when the model has none."""
    job = ModelJob("a", "m", price_per_million_input=1.0, price_per_million_output=4.0)
    assert cost(job, 1_000_000, 500_000) == pytest.approx(3.0)
    assert cost(ModelJob("b", "m"), 10, 10) is None


def test_bundled_example_configs_load(monkeypatch):
    """Every task and model under configs/ loads from the repository root."""
    monkeypatch.chdir(ROOT)
    for path in sorted((ROOT / "configs/models").glob("*.yaml")):
        assert load_model(path).model
    tasks = {p.stem: load_task(p) for p in sorted((ROOT / "configs/tasks").glob("*.yaml"))}
    assert [j.model for j in tasks["distill_mock"].models] == ["mock-a", "mock-b"]
    assert tasks["split_sample"].chunks == 4 and tasks["merge_sample"].merge_errors

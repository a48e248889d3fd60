"""The Ray executor: each shard is a Ray task (running the shard command) on the cluster at
--ray-address, or on a local Ray instance started here; a named actor holds the shared budget.

Ray is an optional extra: `pip install -e ".[ray]"`.
"""
from __future__ import annotations

import logging
import os

from ... import plan
from ..budget import ACTOR_VAR, RAY_ADDRESS_VAR, public_endpoint
from ..ray_budget import NAMESPACE, actor_name, import_ray, start_actor
from .base import Executor

log = logging.getLogger(__name__)


def _run_shard_here(outdir: str, index: int, env: dict, log_path: str) -> int:
    """The body of a shard's Ray task, in the task's own worker process (one task per worker)."""
    import contextlib
    import logging as _logging
    from ..shard import run_shard
    os.environ.update(env)
    with open(log_path, "a", encoding="utf-8") as out, contextlib.redirect_stderr(out):
        handler = _logging.StreamHandler(out)
        _logging.getLogger().addHandler(handler)
        _logging.getLogger().setLevel(_logging.INFO)
        result = run_shard(outdir, index, announce=lambda m: print(m, file=out, flush=True))
    if result.state == "interrupted":
        return 130
    return 3 if result.failed else 0


class RayExecutor(Executor):
    name = "ray"
    foreground = True

    def launch(self, indices: list[int], announce) -> dict:
        """Run the shards as Ray tasks and wait for them (this is the waiting driver)."""
        ray = import_ray()
        context = ray.init(address=self.options.ray_address, namespace=NAMESPACE, log_to_driver=False,
                           logging_level=logging.WARNING, configure_logging=False)
        address = getattr(context, "address_info", {}).get("gcs_address") or self.options.ray_address
        env = {**self.secrets(), **self._budget_env(ray, address)}
        task = ray.remote(num_cpus=self.options.ray_cpus, max_retries=0, max_calls=1)(_run_shard_here)
        refs = {task.remote(str(self.job.dir), i, env, str(self._log(i))): i for i in indices}
        codes = {}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                index = refs.pop(ready[0])
                codes[index] = self._code(ray, ready[0], index, announce)
        finally:
            ray.shutdown()
        return {"exit_codes": codes, "ray_address": address}

    def _budget_env(self, ray, address) -> dict:
        """A shared budget actor for the job's endpoints, unless --budget-share asks for a static share."""
        share = self.shard_env(None)
        if self.options.budget_share is not None:
            return share
        cfg = self.job.shard_config(0)
        endpoints = () if cfg.mock else plan.resolve_endpoints(cfg)
        if not endpoints:
            return share   # each shard starts its own built-in mock: nothing to share
        self._actor = start_actor(ray, self.job, [public_endpoint(e) for e in endpoints])
        return {**share, ACTOR_VAR: actor_name(self.job), RAY_ADDRESS_VAR: address or "auto"}

    def _log(self, index: int):
        paths = self.job.shard(index)
        paths.dir.mkdir(parents=True, exist_ok=True)
        return paths.dir / "stdout.log"

    @staticmethod
    def _code(ray, ref, index: int, announce) -> int:
        try:
            code = ray.get(ref)
        except Exception as err:   # the task's worker died: the shard resumes when resubmitted
            announce(f"shard {index:05d}: Ray task failed: {err}")
            return -1
        if code not in (0, 3):
            announce(f"shard {index:05d} ended with exit code {code}")
        return code

    def alive(self, record: dict) -> bool:
        return False   # launch() returns only once every shard has ended


EXECUTOR = RayExecutor

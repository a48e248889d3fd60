"""The Kubernetes executor: an Indexed Job manifest (one pod per shard) for `kubectl apply -f`.

Applying it is the user's step. Each pod runs `mpdistill shard OUTDIR --shard auto`, which reads
JOB_COMPLETION_INDEX; keys come from the Secret named by --secret; OUTDIR must be shared storage
(the PersistentVolumeClaim named by --pvc, mounted at the same path in every pod).
"""
from __future__ import annotations

import yaml

from ...errors import ConfigError
from .base import Executor


class K8sExecutor(Executor):
    name = "k8s"

    def manifest(self, indices: list[int]) -> dict:
        """The batch/v1 Job as a mapping (completions = parallelism = shards unless --parallel)."""
        o, job = self.options, self.job
        if not o.image:
            raise ConfigError("--executor k8s needs --image (a container image with mpdistill installed)")
        count = job.shards
        env = [{"name": k, "value": v} for k, v in self.shard_env(o.parallel or count).items()]
        container = {"name": "shard", "image": o.image,
                     "command": ["mpdistill", "shard", str(job.dir), "--shard", "auto"], "env": env,
                     "workingDir": str(job.dir)}
        if o.cpus:
            container["resources"] = {"requests": {"cpu": str(o.cpus)}}
        if o.secret:
            container["envFrom"] = [{"secretRef": {"name": o.secret}}]
        pod = {"restartPolicy": "Never", "containers": [container]}
        if o.pvc:
            container["volumeMounts"] = [{"name": "job", "mountPath": str(job.dir.parent)}]
            pod["volumes"] = [{"name": "job", "persistentVolumeClaim": {"claimName": o.pvc}}]
        metadata = {"name": f"mpdistill-{job.fingerprint()[:10]}"}
        if o.namespace:
            metadata["namespace"] = o.namespace
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
                "spec": {"completionMode": "Indexed", "completions": count,
                         "parallelism": min(count, o.parallel or count), "backoffLimit": 6 * count,
                         "template": {"spec": pod}}}

    def launch(self, indices: list[int], announce) -> dict:
        if self.options.wait:
            raise ConfigError("--executor k8s writes a manifest to apply with kubectl; watch it with "
                              "mpdistill status OUTDIR instead of --wait")
        path = self.job.dir / "k8s-job.yaml"
        path.write_text(yaml.safe_dump(self.manifest(indices), sort_keys=False))
        announce(f"Wrote {path}: apply it with  kubectl apply -f {path}  (done shards skip themselves)")
        return {"manifest": str(path)}

    def alive(self, record: dict) -> bool:
        return False


EXECUTOR = K8sExecutor

"""The local executor: shards as processes of this machine, `parallel` at a time (for tests and one big box)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

from .base import Executor

log = logging.getLogger(__name__)

POLL_S = 0.2


class LocalExecutor(Executor):
    name = "local"
    foreground = True

    def at_once(self) -> int:
        return max(1, min(self.job.shards, self.options.parallel or os.cpu_count() or 1))

    def launch(self, indices: list[int], announce) -> dict:
        """Run the shards to their end (this is the waiting driver); SIGTERM/Ctrl-C reach every shard."""
        queue, running, codes = list(indices), {}, {}
        env = {**os.environ, **self.shard_env(self.at_once())}
        previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
        try:
            while queue or running:
                while queue and len(running) < self.at_once():
                    index = queue.pop(0)
                    running[index] = self._start(index, env)
                for index, proc in list(running.items()):
                    if proc.poll() is not None:
                        codes[index] = proc.returncode
                        del running[index]
                        if proc.returncode not in (0, 3):
                            announce(f"shard {index:05d} ended with exit code {proc.returncode}")
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self._stop(running)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return {"exit_codes": codes}

    def _start(self, index: int, env: dict) -> subprocess.Popen:
        paths = self.job.shard(index)
        paths.dir.mkdir(parents=True, exist_ok=True)
        with open(paths.dir / "stdout.log", "ab") as out:
            return subprocess.Popen(self.shard_command(index), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @staticmethod
    def _stop(running: dict) -> None:
        """Ask every running shard to stop (checkpoint saved), and wait for them."""
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            proc.wait()

    def alive(self, record: dict) -> bool:
        return False   # launch() returns only once every shard has ended


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


EXECUTOR = LocalExecutor

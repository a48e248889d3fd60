"""The terminal progress bar, fed with the durable counts (the checkpoints'), never its own."""
from __future__ import annotations


class ProgressBar:
    """A tqdm bar of rows made durable; silent when disabled."""

    def __init__(self, total: int | None, done: int, enabled: bool) -> None:
        self.bar = None
        self._shown = None        # (ok, failed) of this round last drawn
        if enabled:
            from tqdm import tqdm
            tqdm.monitor_interval = 0  # no monitor thread: the manager forks workers later
            self.bar = tqdm(total=total, initial=min(done, total or done), unit="row",
                            dynamic_ncols=True, mininterval=0.5, smoothing=0.1)

    def show(self, ok: int, failed: int) -> None:
        """Draw this round's durable `ok` and `failed` rows."""
        before = self._shown or (0, 0)
        self._shown = (ok, failed)
        if self.bar is not None:
            self.bar.update(ok + failed - sum(before))
            self.bar.set_postfix(ok=ok, failed=failed, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

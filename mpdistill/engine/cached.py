"""The run's use of the response cache: answer a row from it (written through the job's writer like
any answer, endpoint `cache`), fail a miss under --cache-only, store each new answer.

Online and batch mode call the same three methods, so a hit looks the same in either.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import MpdistillError
from ..outputs import records
from ..provider.answer import completion_from_body
from ..state.cache import CacheMissError, ResponseCache
from .request import build_request

log = logging.getLogger(__name__)

CACHE_ENDPOINT = "cache"


class RunCache:
    """A ResponseCache bound to a run."""

    def __init__(self, cache: ResponseCache, explode_samples: bool = False) -> None:
        self.cache = cache
        self.explode = explode_samples

    def _key(self, job, row) -> str | None:
        return self.cache.key(build_request(job.model, job.params, job.system, row.request))

    def serve(self, job, row, iteration: int | None = None) -> bool:
        """True when the row is dealt with: answered from the cache, or (--cache-only) failed as a miss."""
        return self.answer(job, row, iteration)[0]

    def answer(self, job, row, iteration: int | None = None) -> tuple[bool, str | None]:
        """(dealt with, the row's cache key): `serve`, also giving the key for storing the answer later."""
        key = self._key(job, row)
        completion = self.cache.get(key) if key is not None else None
        if completion is None:
            self.cache.note_miss(job)
            if not self.cache.only:
                return False, key
            err = CacheMissError("no answer in the response cache (--cache-only)" if key is not None
                                 else "not cacheable (temperature > 0 without --cache-sampled, or an "
                                      "unreadable image) and --cache-only makes no API call")
            job.writer.add_error(row.key, row.end_offset, records.error_record(
                row, err, model=job.model, attempts=0, history=[], iteration=iteration))
            return True, key
        self.cache.note_hit(job, completion)
        record = records.result_record(row, completion, model=job.model, latency=0.0, attempts=0,
                                       endpoint=CACHE_ENDPOINT, iteration=iteration)
        job.writer.add_result(row.key, row.end_offset, records.with_samples(record, completion.samples, self.explode))
        return True, key

    def store(self, job, row, completion) -> None:
        key = self._key(job, row)
        if key is not None and self.cache.put(key, job.model, completion):
            self.cache.note_stored(job)

    def store_batch(self, job, output: Path | None, rows_file: Path) -> None:
        """Store the answers of a collected batch, under the keys its rows file recorded at packing."""
        if output is None:
            return
        from ..batch.pack import key_of
        keys = {}
        with open(rows_file, "rb") as f:
            for raw in f:
                meta = json.loads(raw)
                if meta.get("cache_key"):
                    keys[meta["key"]] = meta["cache_key"]
        with open(output, "rb") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                    key = keys.get(key_of(line.get("custom_id")))
                    response = line.get("response") or {}
                    if key is None or response.get("status_code") != 200:
                        continue
                    completion = completion_from_body(response.get("body"))
                except (ValueError, AttributeError, MpdistillError) as err:
                    log.debug("not cached: %s", err)
                    continue
                if self.cache.put(key, job.model, completion):
                    self.cache.note_stored(job)

    def figures(self, job) -> dict:
        return self.cache.figures(job)

    def run_figures(self, jobs) -> dict:
        """The cache figures of every job of a run, added up (for status and summary)."""
        figures = [self.figures(j) for j in jobs]
        total = {k: sum(f[k] or 0 for f in figures) for k in ("hits", "misses", "stored", "saved_tokens")}
        costs = [f["saved_cost"] for f in figures if f["saved_cost"] is not None]
        return {**total, "saved_cost": round(sum(costs), 6) if costs else None, "path": figures[0]["path"]}

    def close(self) -> None:
        self.cache.close()


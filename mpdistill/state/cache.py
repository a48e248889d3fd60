"""The response cache (`--cache [PATH]`): each successful answer, keyed by what determines it.

One SQLite file (standard library, WAL, a busy timeout: safe for several runs at once), used by
the manager only. The key hashes the model, the messages (images by the SHA-256 of their
content), the generation params and `n` — never the key or the endpoint. Requests sampled with
`temperature > 0` are not cached unless `--cache-sampled`: replaying one draw as a fresh sample
would quietly make distilled data less diverse. A damaged file is set aside and rebuilt with a
warning; a fault while running turns the cache off for the rest of the run, never crashes it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, RowError, RunAbortedError
from ..provider.answer import Completion

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_NAME = "response_cache.sqlite"
_NOT_KEYED = frozenset({"timeout", "extra_headers", "extra_query", "stream"})
_CHUNK = 1 << 20


class CacheMissError(RowError):
    """--cache-only: the cache holds no answer for this row."""


@dataclass
class CacheFigures:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    saved_tokens: int = 0
    saved_cost: float | None = None


def cache_path(setting: str, checkpoint_dir: str) -> Path:
    """`--cache` alone: the default file in the checkpoint folder; else the path given."""
    return Path(setting) if setting else Path(checkpoint_dir) / DEFAULT_NAME


def image_digest(url: str, base_dir: Path | None) -> str | None:
    """The SHA-256 of an image's content (a local file's bytes; a data URL's text); None if unreadable.

    http(s) images are keyed by their URL: their content is the provider's to fetch.
    """
    if url.startswith(("http://", "https://")):
        return "url:" + url
    if url.startswith("data:"):
        return hashlib.sha256(url.encode()).hexdigest()
    path = Path(url) if base_dir is None or Path(url).is_absolute() else Path(base_dir) / url
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def request_key(request: dict, base_dir: Path | None, image_max_side: int | None) -> str | None:
    """The cache key of a chat request; None when an image cannot be read (the call reports it)."""
    messages = []
    for message in request.get("messages") or ():
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "image"):
                    ref = part.get("image_url")
                    url = ref.get("url") if isinstance(ref, dict) else ref
                    digest = image_digest(str(url), base_dir)
                    if digest is None:
                        return None
                    part = {"type": "image", "sha256": digest}
                parts.append(part)
            message = {**message, "content": parts}
        messages.append(message)
    params = {k: v for k, v in request.items() if k not in _NOT_KEYED and k not in ("messages", "model")}
    material = {"v": SCHEMA_VERSION, "model": request.get("model"), "messages": messages, "params": params,
                "image_max_side": image_max_side}
    text = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """Look up and store answers; per-job figures for the summary and the status file."""

    def __init__(self, path: Path, *, base_dir=None, image_max_side=None, sampled=False, only=False) -> None:
        self.path = Path(path)
        self.base_dir = base_dir
        self.image_max_side = image_max_side
        self.sampled = sampled
        self.only = only
        self._db: sqlite3.Connection | None = None
        self._off = False
        self._figures: dict[str, CacheFigures] = {}

    # ---- the file -----------------------------------------------------------------------------

    def open(self) -> ResponseCache:
        """Open (or create) the file; a damaged one is set aside and rebuilt, with a warning."""
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as err:
            if self.only:
                raise ConfigError(f"response cache {self.path} is damaged ({err}); --cache-only cannot "
                                  "answer from it") from err
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            self.path.replace(aside)
            log.warning("response cache %s is damaged (%s): moved to %s, starting an empty cache",
                        self.path, err, aside.name)
            self._db = self._connect()
        return self

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, "
                       "response TEXT NOT NULL, created_at REAL)")
            row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {row[0]}, this mpdistill uses {SCHEMA_VERSION}")
            db.execute("SELECT count(*) FROM (SELECT 1 FROM responses LIMIT 1)").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _fault(self, err: sqlite3.Error) -> None:
        if self.only:
            raise RunAbortedError(f"response cache {self.path} failed mid-run ({err}); --cache-only "
                                  "cannot go on; rows answered so far are saved") from err
        if not self._off:
            log.warning("response cache %s failed (%s): the cache is off for the rest of this run", self.path, err)
        self._off = True

    # ---- answers ------------------------------------------------------------------------------

    def key(self, request: dict) -> str | None:
        temperature = request.get("temperature")
        if not self.sampled and isinstance(temperature, (int, float)) and temperature > 0:
            return None
        return request_key(request, self.base_dir, self.image_max_side)

    def get(self, key: str) -> Completion | None:
        if self._off or self._db is None:
            return None
        try:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
            return None if row is None else _completion(json.loads(row[0]))
        except (sqlite3.Error, ValueError, TypeError) as err:
            self._fault(err if isinstance(err, sqlite3.Error) else sqlite3.DatabaseError(str(err)))
            return None

    def put(self, key: str, model: str | None, completion: Completion) -> bool:
        if self._off or self._db is None:
            return False
        try:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                             (key, model, json.dumps(_plain(completion)), time.time()))
            return True
        except sqlite3.Error as err:
            self._fault(err)
            return False

    def figures(self, job) -> dict:
        f = self._figures.setdefault(job.alias, CacheFigures())
        return {"path": str(self.path), "hits": f.hits, "misses": f.misses, "stored": f.stored,
                "saved_tokens": f.saved_tokens, "saved_cost": None if f.saved_cost is None else round(f.saved_cost, 6)}

    def note_hit(self, job, completion: Completion) -> None:
        f = self._figures.setdefault(job.alias, CacheFigures())
        f.hits += 1
        usage = completion.usage or {}
        f.saved_tokens += int(usage.get("total_tokens") or 0)
        prices = job.prices
        if prices and prices != (None, None):
            cost = (int(usage.get("prompt_tokens") or 0) * (prices[0] or 0)
                    + int(usage.get("completion_tokens") or 0) * (prices[1] or 0)) / 1e6
            f.saved_cost = (f.saved_cost or 0.0) + cost

    def note_miss(self, job) -> None:
        self._figures.setdefault(job.alias, CacheFigures()).misses += 1

    def note_stored(self, job) -> None:
        self._figures.setdefault(job.alias, CacheFigures()).stored += 1


def _plain(c: Completion) -> dict:
    return {"answer": c.answer, "reasoning": c.reasoning, "finish_reason": c.finish_reason, "usage": c.usage,
            "model": c.model, "extracted": c.extracted, "samples": list(c.samples) if c.samples else None}


def _completion(data: dict) -> Completion:
    samples = data.get("samples")
    return Completion(answer=data.get("answer"), reasoning=data.get("reasoning"),
                      finish_reason=data.get("finish_reason"), usage=data.get("usage"), model=data.get("model"),
                      extracted=data.get("extracted"), samples=tuple(samples) if samples else None)

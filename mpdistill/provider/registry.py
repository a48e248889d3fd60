"""Where endpoints come from: a YAML endpoints file, the OPENAI_API_KEYS shorthand, and `--pool` selection.

Every problem is a `ConfigError` that names the file and the endpoint or key; no message ever shows a key.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml

from mpdistill.provider.endpoint import Endpoint
from mpdistill.errors import ConfigError

logger = logging.getLogger(__name__)

_FIELDS = ("name", "base_url", "api_key", "api_key_env", "models", "rpm", "tpm",
           "max_concurrency", "weight", "batch_max_in_flight", "batch_max_tokens")


def load_endpoints(path: str | os.PathLike) -> list[Endpoint]:
    """Read the endpoints file: a YAML list, or a mapping whose `endpoints:` holds the list."""
    path = Path(path)
    items = _endpoint_items(_read_yaml(path), path)
    endpoints = [_endpoint(item, number, path) for number, item in enumerate(items, 1)]
    _check_unique(endpoints, str(path))
    return endpoints


def endpoints_from_env(base_url: str, keys_csv: str, *, rpm: float | None = None,
                       tpm: float | None = None) -> list[Endpoint]:
    """One base URL, many keys (`OPENAI_API_KEYS=k1,k2`): endpoints named key_1, key_2, …"""
    where = "OPENAI_API_KEYS"
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigError(f"{where}: a base URL is needed with the keys")
    keys = list(dict.fromkeys(k.strip() for k in (keys_csv or "").split(",") if k.strip()))
    if not keys:
        raise ConfigError(f"{where}: no key given")
    if len(keys) < len([k for k in (keys_csv or "").split(",") if k.strip()]):
        logger.warning("%s lists the same key more than once; each key is used once", where)
    rpm = _positive(rpm, "rpm", where)
    tpm = _positive(tpm, "tpm", where)
    return [Endpoint(name=f"key_{number}", base_url=base_url.strip(), api_key=key, rpm=rpm, tpm=tpm)
            for number, key in enumerate(keys, 1)]


def select_pool(endpoints: list[Endpoint], names_csv: str) -> list[Endpoint]:
    """The endpoints named in `--pool a,b` (in the file's order); an unknown name is a ConfigError."""
    wanted = {name.strip() for name in (names_csv or "").split(",") if name.strip()}
    known = [e.name for e in endpoints]
    unknown = sorted(wanted - set(known))
    if unknown or not wanted:
        what = f"unknown endpoint(s) {', '.join(unknown)}" if unknown else "no endpoint named"
        raise ConfigError(f"--pool: {what}; known endpoints: {', '.join(known) or '(none)'}")
    return [e for e in endpoints if e.name in wanted]


def _read_yaml(path: Path) -> Any:
    """Parse the file; a YAML error reports only its position, since the line may hold a key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or type(err).__name__
        raise ConfigError(f"{path}: cannot read the endpoints file: {why}") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from err


def _endpoint_items(data: Any, path: Path) -> list:
    """The list of endpoint mappings, from either accepted top-level shape."""
    if isinstance(data, dict):
        extra = sorted(str(key) for key in data if key != "endpoints")
        if extra:
            raise ConfigError(f"{path}: unknown top-level key {extra[0]!r}; expected 'endpoints'")
        data = data.get("endpoints")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of endpoints, or 'endpoints:' holding one")
    if not data:
        raise ConfigError(f"{path}: the endpoints list is empty")
    return data


def _endpoint(item: Any, number: int, path: Path) -> Endpoint:
    """One validated `Endpoint` from one mapping of the file."""
    if not isinstance(item, dict):
        raise ConfigError(f"{path}: endpoint #{number} must be a mapping")
    name = item.get("name")
    where = f"{path}: endpoint {name!r}" if isinstance(name, str) and name else f"{path}: endpoint #{number}"
    unknown = sorted(str(key) for key in item if key not in _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_FIELDS)}")
    return Endpoint(
        name=_text(item.get("name"), "name", where),
        base_url=_text(item.get("base_url"), "base_url", where),
        api_key=_api_key(item, where),
        models=_models(item.get("models"), where),
        rpm=_positive(item.get("rpm"), "rpm", where),
        tpm=_positive(item.get("tpm"), "tpm", where),
        max_concurrency=_positive_int(item.get("max_concurrency"), "max_concurrency", where),
        weight=_positive(item.get("weight"), "weight", where) or 1.0,
        batch_max_in_flight=_positive_int(item.get("batch_max_in_flight"), "batch_max_in_flight", where),
        batch_max_tokens=_positive_int(item.get("batch_max_tokens"), "batch_max_tokens", where),
    )


def _api_key(item: dict, where: str) -> str:
    """The key, given inline or through an environment variable; "" when neither (a local server)."""
    inline, env_name = item.get("api_key"), item.get("api_key_env")
    if inline is not None and env_name is not None:
        raise ConfigError(f"{where}: give api_key or api_key_env, not both")
    if env_name is not None:
        if not isinstance(env_name, str) or not env_name.strip():
            raise ConfigError(f"{where}: api_key_env must name an environment variable")
        value = os.environ.get(env_name.strip(), "").strip()
        if not value:
            raise ConfigError(f"{where}: environment variable {env_name.strip()} (api_key_env) is not set")
        return value
    if inline is not None and not isinstance(inline, str):
        raise ConfigError(f"{where}: api_key must be a string")  # the value is never shown
    return (inline or "").strip()


def _text(value: Any, key: str, where: str) -> str:
    """A required non-empty string field."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} is required and must be a non-empty string")
    return value.strip()


def _models(value: Any, where: str) -> tuple[str, ...]:
    """The optional list of model names; empty means every model."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(m, str) and m.strip() for m in value):
        raise ConfigError(f"{where}: models must be a list of model names")
    return tuple(m.strip() for m in value)


def _positive(value: Any, key: str, where: str) -> float | None:
    """An optional finite number > 0 (bools are not numbers here)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a number > 0, got {value!r}")
    return float(value)


def _positive_int(value: Any, key: str, where: str) -> int | None:
    """An optional integer > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: {key} must be an integer > 0, got {value!r}")
    return value


def _check_unique(endpoints: list[Endpoint], where: str) -> None:
    """Names identify endpoints in logs, status and `--pool`, so they must be unique."""
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.name in seen:
            raise ConfigError(f"{where}: duplicate endpoint name {endpoint.name!r}")
        seen.add(endpoint.name)

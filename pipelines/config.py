"""Typed configuration: one dataclass per stage, mirrored in YAML, overridden with ``key=value``.

``load_config(Cls, file, overrides)`` validates everything before any work starts and raises one
``ConfigError`` that lists every problem (unknown keys, wrong types, bad values) at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
MAX_CONFIG_BYTES = 1 << 20       # a config file larger than this is not a config
MAX_CONFIG_NODES = 100_000       # values in a config once YAML aliases are expanded


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def parse_overrides(pairs: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``["vad.threshold=0.6", "name=x"]`` → ({"vad": {"threshold": 0.6}, "name": "x"}, problems).

    A mapping merges into what it names, as a config file's mapping does: ``train.stage_steps={dpo: 3}``
    after ``train.stage_steps={sft: 5, dpo: 2}`` gives ``{sft: 5, dpo: 3}``, not ``{dpo: 3}``."""
    tree: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            problems.append(f"override {pair!r} is not key=value")
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {pair!r} conflicts with another override")
                break
        else:
            have = node.get(parts[-1])
            node[parts[-1]] = deep_merge(have, value) if isinstance(have, dict) and isinstance(value, dict) else value
    return tree, problems


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[T], file: str | None = None, overrides: list[str] = (),
                extra: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from a YAML file, then ``extra``, then ``key=value`` overrides; validate it all."""
    problems: list[str] = []
    data: dict[str, Any] = {}
    if file:
        loaded = _load_yaml(file, problems)
        if loaded is not None and not isinstance(loaded, dict):
            problems.append(f"{file}: top level must be a mapping, got {type(loaded).__name__}")
        elif loaded is not None:
            data = loaded
    data = deep_merge(data, extra or {})
    over, over_problems = parse_overrides(list(overrides))
    problems += over_problems
    data = deep_merge(data, over)
    value = _build(cls, data, "", problems)
    # Bad values fall back to defaults, so value checks (e.g. missing inputs) still run and report too.
    check = getattr(value, "validate", None)
    if value is not None and check is not None:
        problems += check()
    if problems:
        raise ConfigError(problems)
    return value


def _load_yaml(file: str, problems: list[str]) -> Any:
    """The file's YAML (safe_load), refused when the file or its alias-expanded value is too big."""
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        problems.append(f"config file {file!r}: {e.strerror}")
        return None
    if len(raw) > MAX_CONFIG_BYTES:
        problems.append(f"config file {file!r} is larger than {MAX_CONFIG_BYTES >> 20} MB")
        return None
    try:
        loaded = yaml.safe_load(raw.decode("utf-8")) or {}
    except UnicodeDecodeError:
        problems.append(f"config file {file!r} is not UTF-8 text")
        return None
    except yaml.YAMLError as e:
        problems.append(f"config file {file!r} is not valid YAML: {str(e)[:300]}")
        return None
    except RecursionError:
        problems.append(f"config file {file!r} is nested too deeply")
        return None
    if _too_big(loaded):
        problems.append(f"config file {file!r} expands to more than {MAX_CONFIG_NODES} values "
                        "(YAML aliases repeat what they point at); refused")
        return None
    return loaded


def _too_big(value: Any) -> bool:
    """Whether walking ``value`` as a tree (aliases expanded, cycles included) visits too many nodes."""
    budget = MAX_CONFIG_NODES
    stack = [value]
    while stack:
        budget -= 1
        if budget < 0:
            return True
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


def show(value: Any, limit: int = 60) -> str:
    """A value as an error message echoes it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    where = path or "config"
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{path + '.' if path else ''}{show(key, 40) if not isinstance(key, str) else key[:40]}: "
                            f"unknown key{hint}; known: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            before = len(problems)
            value = _coerce(hints[name], data[name], f"{path + '.' if path else ''}{name}", problems)
            if len(problems) == before or dataclasses.is_dataclass(hints[name]):
                kwargs[name] = value
            elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) or v is None for v in value):
                kwargs[name] = [v for v in value if v is not None]   # the good entries are still checked
    try:
        return cls(**kwargs)
    except TypeError as e:
        problems.append(f"{where}: {e}")
        return None


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, path, problems)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if isinstance(value, str) and item_tp is str:
                return [value]
            problems.append(f"{path}: expected a list, got {type(value).__name__} {show(value)}")
            return []
        return [_coerce(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return {}
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(val_tp, v, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)      # YAML 1.1 reads 2e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number, got {type(value).__name__} {show(value)}")
            return 0.0
        if not math.isfinite(value):
            problems.append(f"{path}: expected a finite number, got {value}")
            return 0.0
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {type(value).__name__} {show(value)}")
            return 0
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {show(value)}")
            return False
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            problems.append(f"{path}: expected a string, got {type(value).__name__}")
            return ""
        return str(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def positive(problems: list[str], **values: float) -> None:
    """Append a problem for each named value that is not > 0."""
    for name, v in values.items():
        if not v > 0:
            problems.append(f"{name}: must be > 0, got {v}")


SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def name_problems(**values: str) -> list[str]:
    """Name-like settings end up in file names and records: no separators, no '..'."""
    return [f"{key}: {show(v)} must start with a letter or digit and hold only letters, digits and . _ + - "
            "(no '/', no '..')" for key, v in values.items()
            if v and (not NAME_RE.fullmatch(v) or ".." in v)]


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """Config section ``shards`` of every job that writes shards."""

    target_mb: float = 64.0
    max_samples: int = 10000
    prefix: str = "segments"

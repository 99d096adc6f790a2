"""How the configuration tree is read: values turned into its annotated types (or a ConfigError
naming the key), trees merged, `--set` flags parsed, and the tree walked leaf by leaf.

The tree itself, every default with its explanation, is `orpheus_tts.config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a YAML/env/flag value into the annotated type, or say exactly what is wrong."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where)
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # `--set security.allowed_origins=https://a,https://b`
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else coerce(value, args[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def build(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where or 'config'}; known: {sorted(names)}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: dict, override: Mapping) -> dict:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def parse_set_flags(items: list[str]) -> dict[str, Any]:
    """`["scheduler.max_batch_size=8"]` -> `{"scheduler.max_batch_size": 8}` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


@dataclass(frozen=True)
class Setting:
    """One leaf of the configuration, as the reference and the example config show it."""

    key: str  # dotted, as `--set` takes it: "scheduler.max_batch_size", "tuning.longform.max_text_chars"
    type: type
    default: Any
    doc: str
    live: bool


def leaf_settings(config: Any, prefix: str = "") -> Iterator[Setting]:
    """Every leaf setting of the configuration tree `config`, in declaration order."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from leaf_settings(value, key + ".")
        elif isinstance(value, dict):
            for name, entry in value.items():
                yield from leaf_settings(entry, f"{key}.{name}.")
        else:
            yield Setting(key, hints[f.name], value, f.metadata.get("doc", ""), f.metadata.get("live", False))

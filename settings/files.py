"""Config files: YAML load (composed from `base:` files), save, `--set` overrides, and the config
that travels beside a checkpoint.

A config file may name another with `base: FILE` (relative to itself): it then holds only what
differs. The saved config of a run or checkpoint is always the whole resolved config (no `base:`),
so it loads on its own.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import yaml

from base.atomic import write_text_atomic
from settings.schema import Config, ConfigError, check_keys, config_from_dict, config_to_dict

BASE_KEY = "base"


def apply_overrides(cfg: Config, overrides: List[str], source: str = "--set") -> Config:
    """Apply `key=value` strings (value parsed as YAML) and re-validate."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{source}: unknown key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{source}: unknown key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return config_from_dict(data, source)


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: sections merge key by key, any other value (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _compose(path: Path, chain: tuple = ()) -> dict:
    """The file's keys over those of its `base:` file (a path relative to the file), recursively;
    each file's own keys are validated and named with that file."""
    if path.resolve() in chain:
        raise ConfigError(f"{path}: base: the chain of base files loops back to this file")
    data = _read_file(path)
    base = data.pop(BASE_KEY, None)
    check_keys(data, str(path))
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected the file name of another config, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path}: config file not found")
    return _merge(_compose(base_path, chain + (path.resolve(),)), data)


def load_config(path: str | os.PathLike) -> Config:
    """The config of a YAML file: its keys over its `base:` chain over the schema defaults."""
    path = Path(path)
    return config_from_dict(_compose(path), str(path))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_beside(checkpoint: str | os.PathLike) -> Path:
    """A checkpoint's config travels with it: CKPT with suffix .yaml."""
    return Path(checkpoint).with_suffix(".yaml")


def resolve_config(checkpoint: str | os.PathLike | None, config: str | os.PathLike | None) -> Config:
    """`--config` wins; otherwise the config beside `--checkpoint`."""
    if config is not None:
        return load_config(config)
    if checkpoint is None:
        raise ConfigError("give --config or a --checkpoint with its .yaml beside it")
    beside = config_beside(checkpoint)
    if not beside.is_file():
        raise ConfigError(f"{checkpoint}: no config beside the checkpoint ({beside}); pass --config")
    return load_config(beside)

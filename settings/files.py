"""Config files: YAML load (composed from `base:` files), save, `--set` overrides, and the config
that travels beside a checkpoint.

A config file may name another with `base: FILE` (relative to itself): it then holds only what
differs. The saved config of a run or checkpoint is always the whole resolved config (no `base:`),
so it loads on its own.

Every YAML the project reads (configs, `--set` values, a release's variant.yml, a checkpoint's
config) goes through `parse_yaml`: safe tags only, a duplicate key at any depth is an error (never
last-wins), and the document is bounded before it is built: its bytes, its nesting depth, and its
node count with each alias counting the nodes it repeats (aliases stay allowed: PyYAML's own dump
writes them for a value used twice, as in official variant.yml files).

A checkpoint's config (CKPT with suffix .yaml) starts with a marker line holding the checksum of
what follows: a file with an intact marker was written by this project and may be replaced; one a
user wrote or edited is never replaced (`written_by_us`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import yaml

from base.atomic import write_text_atomic
from base.checksums import fingerprint
from base.messages import cut, short_repr
from settings.schema import Config, ConfigError, check_keys, config_from_dict, config_to_dict

BASE_KEY = "base"
MAX_YAML_BYTES = 1 << 20  # configs and variant.yml files are a few KB
MAX_YAML_NODES = 100_000  # after alias expansion
MAX_YAML_DEPTH = 32
OURS_MARK = "# segmenter: checkpoint config written by convert-weights or train; edits make it yours. "


class _Refused(yaml.MarkedYAMLError):
    """A document the loader will not build; the message needs no 'not valid YAML'."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and documents past the bounds above."""

    def __init__(self, stream):
        super().__init__(stream)
        self._expanded = {}  # id(node) -> nodes it stands for, aliases expanded
        self._depth = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            if id(node) not in self._expanded:
                raise _Refused(None, None, "an alias refers to a node that contains it", node.start_mark)
            return node
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        size = 1 + sum(self._expanded[id(child)] for child in children)
        if size > MAX_YAML_NODES:
            raise _Refused(None, None, f"expands to more than {MAX_YAML_NODES} values (each alias counts "
                                       "what it repeats)", node.start_mark)
        self._expanded[id(node)] = size
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class refuses it with its own message
            if duplicate:
                raise _Refused(None, None, f"duplicate key {short_repr(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str | bytes, source: str, loader=StrictLoader):
    """The document in `text` (None if empty); ConfigError `SOURCE: line N: what` if refused."""
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        if isinstance(err, _Refused):
            raise ConfigError(f"{source}: {where}{err.problem}") from None
        problem = ": ".join(p for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p)
        raise ConfigError(f"{source}: {where}not valid YAML: {cut(problem or str(err))}") from None
    except ValueError as err:  # a scalar its type refuses (a date out of range, an int of 5000 digits)
        raise ConfigError(f"{source}: not valid YAML: {cut(str(err))}") from None


def read_yaml(path: Path, loader=StrictLoader):
    """The document of the YAML file `path`, read within MAX_YAML_BYTES."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES} bytes; not a config file")
    return parse_yaml(data, str(path), loader)


def apply_overrides(cfg: Config, overrides: List[str], source: str = "--set") -> Config:
    """Apply `key=value` strings (value parsed as YAML) and re-validate."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: {short_repr(item)} is not key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{source}: unknown key {short_repr(key)}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{source}: unknown key {short_repr(key)}")
        node[parts[-1]] = parse_yaml(raw, f"{source}: {key.strip()}")
    return config_from_dict(data, source)


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = read_yaml(path)
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


def _compose(path: Path, chain: tuple = ()) -> tuple[dict, tuple]:
    """The file's keys over those of its `base:` file (a path relative to the file), recursively,
    and the files read; each file's own keys are validated and named with that file."""
    if path.resolve() in chain:
        raise ConfigError(f"{path}: base: the chain of base files loops back to this file")
    data = _read_file(path)
    base = data.pop(BASE_KEY, None)
    check_keys(data, str(path))
    chain = chain + (path.resolve(),)
    if base is None:
        return data, chain
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected the file name of another config, got {short_repr(base)}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path}: config file not found")
    below, chain = _compose(base_path, chain)
    return _merge(below, data), chain


def load_config_files(path: str | os.PathLike) -> tuple[Config, tuple]:
    """The config of a YAML file (its keys over its `base:` chain over the schema defaults) and
    the files it was read from (resolved), the named one first."""
    path = Path(path)
    data, files = _compose(path)
    return config_from_dict(data, str(path)), files


def load_config(path: str | os.PathLike) -> Config:
    """The config of a YAML file: its keys over its `base:` chain over the schema defaults."""
    return load_config_files(path)[0]


def config_text(cfg: Config) -> str:
    """The whole resolved config as YAML (what a run's config.yaml and a checkpoint's config hold)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, config_text(cfg))


def save_checkpoint_config(cfg: Config, path: str | os.PathLike) -> None:
    """`save_config` with the first-line marker that proves the file ours (`written_by_us`)."""
    body = config_text(cfg)
    write_text_atomic(Path(path), f"{OURS_MARK}{fingerprint(body.encode())}\n{body}")


def written_by_us(path: str | os.PathLike) -> bool:
    """True if `path` is a checkpoint config this project wrote and nobody changed since."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except OSError:
        return False
    head, newline, body = data.partition(b"\n")
    return bool(newline) and head == (OURS_MARK + fingerprint(body)).encode()


def config_beside(checkpoint: str | os.PathLike) -> Path:
    """A checkpoint's config travels with it: CKPT with suffix .yaml."""
    return Path(checkpoint).with_suffix(".yaml")


def resolve_config(checkpoint: str | os.PathLike | None, config: str | os.PathLike | None) -> Config:
    """`--config` wins; otherwise the config beside `--checkpoint`. A given checkpoint must exist."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"{checkpoint}: checkpoint not found")
    if config is not None:
        return load_config(config)
    if checkpoint is None:
        raise ConfigError("give --config or a --checkpoint with its .yaml beside it")
    beside = config_beside(checkpoint)
    if not beside.is_file():
        raise ConfigError(f"{checkpoint}: no config beside the checkpoint ({beside}); pass --config")
    return load_config(beside)

"""Model checkpoints: `.ckpt` + the config beside it (CKPT with suffix .yaml).

Training checkpoints may hold non-model entries; their keys start with `optimizer.` or
`state.` and are ignored here. Every checkpoint written here also holds the resolved config it
was saved with (`CONFIG_ENTRY`, YAML text): loading compares the given config's model with it,
so a config that builds a network of the same shapes but computes something else (other head
count, other pixel statistics) is refused. Checkpoints older than that entry are checked against
what their shapes imply. Anything else that is not a model parameter is an error, and so is a
weight that is NaN or infinite. A checkpoint also carries the class table and eval protocol of its
data (`DATASET_ENTRY`), which `predict` paints with; one without it is a Cityscapes model.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import operator
from pathlib import Path

import numpy as np
import mindspore as ms

from base.errors import UserError
from base.atomic import private_output
from base.class_table import CITYSCAPES, ClassTable
from base.messages import cut, short_repr
from base.ownership import same_file
from settings.files import config_beside, config_text, parse_yaml, resolve_config, save_checkpoint_config, \
    written_by_us
from settings.datasets import DatasetEval, load_dataset
from settings.schema import Config, ConfigError, config_from_dict, with_eval_protocol
from model.segmenter import build_segmenter

EXTRA_PREFIXES = ("optimizer.", "state.")
CONFIG_ENTRY = "config.yaml"
# The class table and eval protocol of the data the weights were trained on (JSON text); under
# the `config.` prefix, so it is never taken for a parameter.
DATASET_ENTRY = "config.dataset.json"
_MAX_DATASET_CHARS = 64 << 10  # 255 long class names and their colours fit several times over
NON_MODEL_PREFIXES = EXTRA_PREFIXES + ("config.",)
# The model.* keys that decide what the weights compute (dropout rates and `pretrained` may differ).
MODEL_IDENTITY = ("patch_size", "d_model", "n_layers", "n_heads", "mlp_ratio", "n_cls", "image_size", "mean", "std",
                  "decoder.name", "decoder.n_layers")
# Of those, what weights that only start a training run must share with its config: every other key
# changes a shape (refused with the shapes) or is the run's own choice (pixel statistics).
STARTING_IDENTITY = ("n_heads",)


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used with the config; the message names the file."""


def _names(names, limit=8):
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_finite(arrays: dict, source: str) -> None:
    """CheckpointError naming the first tensor (sorted by name) that holds NaN or infinity."""
    for name in sorted(arrays):
        if not np.isfinite(arrays[name]).all():
            raise CheckpointError(f"{source}: tensor {name} holds NaN/inf")


def match_parameters(net, tensors: dict, source: str) -> dict:
    """Check `tensors` (name -> array) covers every parameter of `net` with its shape, nothing else,
    every value finite.

    Returns name -> float32 numpy array. Raises CheckpointError listing every offending name.
    """
    expected = {p.name: tuple(p.shape) for p in net.get_parameters()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shaped = sorted(f"{k} {tuple(np.shape(tensors[k]))} != {expected[k]}"
                    for k in set(expected) & set(tensors) if tuple(np.shape(tensors[k])) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
    if shaped:
        problems.append(f"wrong shape {len(shaped)}: {_names(shaped)}")
    if problems:
        raise CheckpointError(f"{source}: does not match the model of the config; " + "; ".join(problems))
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    check_finite(arrays, source)
    return arrays


def assign_parameters(net, arrays: dict) -> None:
    for p in net.get_parameters():
        p.set_data(ms.Tensor(arrays[p.name]))


def _blocks(shapes: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)})


def check_implied(model, shapes: dict, source: str) -> None:
    """Compare `model` (ModelConfig) with the numbers the weight shapes (name -> shape) imply,
    before a network is built: a config far larger than the weights never allocates."""
    facts = []  # (key, the config's value, the weights' value, evidence)

    def fact(key, configured, name, rank, implied):
        shape = shapes.get(name)
        if shape is not None and len(shape) == rank:
            facts.append((key, configured, implied(shape), f"{name} {shape}"))

    p = model.patch_size
    fact("model.d_model", model.d_model, "encoder.cls_token", 3, lambda s: s[2])
    fact("model.patch_size", p, "encoder.patch_embed.proj.weight", 4, lambda s: s[2])
    fact("model.mlp_ratio", model.mlp_ratio, "encoder.blocks.0.mlp.fc1.weight", 2, lambda s: s[0] / max(s[1], 1))
    fact("model.image_size / model.patch_size (positions)", (model.image_size[0] // p) * (model.image_size[1] // p),
         "encoder.pos_embed", 3, lambda s: s[1] - 1)
    fact("model.n_cls", model.n_cls, "decoder.cls_emb", 3, lambda s: s[1])
    fact("model.n_cls", model.n_cls, "decoder.head.weight", 2, lambda s: s[0])
    if any(k.startswith("encoder.") for k in shapes):
        facts.append(("model.n_layers", model.n_layers, _blocks(shapes, "encoder.blocks."), "encoder.blocks.N"))
    for name, decoder in (("decoder.head.weight", "linear"), ("decoder.cls_emb", "mask_transformer")):
        if name in shapes:
            facts.append(("model.decoder.name", model.decoder.name, decoder, name))
    if "decoder.cls_emb" in shapes:
        facts.append(("model.decoder.n_layers", model.decoder.n_layers, _blocks(shapes, "decoder.blocks."),
                      "decoder.blocks.N"))
    wrong = [f"{key} is {short_repr(mine)} in the config, the weights imply {short_repr(theirs)} ({evidence})"
             for key, mine, theirs, evidence in facts if mine != theirs]
    if wrong:
        raise CheckpointError(f"{source}: does not match the model of the config: " + "; ".join(wrong))


def stored_config(entries: dict, source) -> Config | None:
    """The config a checkpoint was saved with (its `CONFIG_ENTRY`); None for older checkpoints."""
    text = entries.get(CONFIG_ENTRY)
    if text is None:
        return None
    where = f"{source}: entry {CONFIG_ENTRY}"
    if not isinstance(text, str):
        raise CheckpointError(f"{where}: expected the config as text")
    try:
        return config_from_dict(parse_yaml(text, where) or {}, where)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _same_value(mine, theirs) -> bool:
    """Equal; numbers (and lists of them) within a relative 1e-6, so a config's mean 57.12 is a
    release's 0.224 * 255 (57.120000000000005)."""
    if isinstance(mine, str) or isinstance(theirs, str):
        return mine == theirs
    a, b = np.asarray(mine, np.float64), np.asarray(theirs, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, atol=0))


def check_same_model(cfg: Config, saved: Config, source, starting: bool = False) -> None:
    """CheckpointError naming every MODEL_IDENTITY key whose value differs between `cfg` and `saved`
    (`starting`: only STARTING_IDENTITY, the weights start a training run)."""
    wrong = []
    for key in STARTING_IDENTITY if starting else MODEL_IDENTITY:
        mine, theirs = operator.attrgetter(key)(cfg.model), operator.attrgetter(key)(saved.model)
        if not _same_value(mine, theirs):
            wrong.append(f"model.{key} is {short_repr(mine)} in the config, {short_repr(theirs)} in the checkpoint")
    if wrong:
        raise CheckpointError(f"{source}: does not match the model of the config: " + "; ".join(wrong)
                              + " (the checkpoint holds the config it was saved with)")


# What convert-weights (weights/convert.py) reads rather than a MindSpore checkpoint: an official
# release's PyTorch file, by name or by content (torch.save writes a zip, older versions a pickle),
# and Google's ViT .npz (a zip as well).
RELEASE_SUFFIXES = (".pth", ".pt")
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02")


def checkpoint_file(ckpt_path) -> Path:
    """CKPT as a Path once it is a file that may be a MindSpore checkpoint; CheckpointError if it
    is missing, or is what convert-weights reads (a release's folder or .pth, a ViT .npz): the
    message gives the command that converts it."""
    path = Path(ckpt_path)
    kind = "an official Segmenter release (PyTorch)" if path.is_dir() and (path / "checkpoint.pth").is_file() else None
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if path.suffix == ".npz":
            kind = "a Google ViT .npz"
        elif path.suffix in RELEASE_SUFFIXES or magic.startswith(_TORCH_MAGIC):
            kind = "an official Segmenter release (PyTorch)"
    if kind is not None:
        config = " --config CONFIG.yaml" if path.suffix == ".npz" else ""
        raise CheckpointError(f"{path}: {kind}, not a MindSpore checkpoint; convert it first: "
                              f"python cli.py convert-weights {path}{config} --out {path.with_suffix('.ckpt')}")
    if not path.is_file():
        raise CheckpointError(f"{path}: {'a folder, not a checkpoint' if path.is_dir() else 'checkpoint not found'}")
    return path


def load_model(ckpt_path, cfg, starting: bool = False):
    """Build `cfg.model` and load every parameter from CKPT (eval mode). `starting`: the weights
    only start a training run (`model.pretrained`), whose config may change what fine-tuning
    chooses (pixel statistics, drop rates): only STARTING_IDENTITY must agree."""
    path = checkpoint_file(ckpt_path)
    try:
        raw = ms.load_checkpoint(str(path))
    except Exception as err:  # MindSpore raises ValueError/RuntimeError on corrupt files
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({cut(str(err).splitlines()[0])})") \
            from None
    saved = stored_config(raw, path)
    if saved is not None:
        check_same_model(cfg, saved, path, starting)
    odd = [k for k, v in raw.items() if not k.startswith(NON_MODEL_PREFIXES) and not isinstance(v, ms.Tensor)]
    if odd:
        raise CheckpointError(f"{path}: entry {short_repr(odd[0])} is not a tensor")
    tensors = {k: v.asnumpy() for k, v in raw.items() if not k.startswith(NON_MODEL_PREFIXES)}
    check_implied(cfg.model, {k: v.shape for k, v in tensors.items()}, str(path))
    net = build_segmenter(cfg.model)
    assign_parameters(net, match_parameters(net, tensors, str(path)))
    net.set_train(False)
    return net


def check_checkpoint_target(ckpt_path, inputs=()) -> None:
    """Refuse (FileExistsError naming the file) to write CKPT or its config over one of `inputs`
    (compared as files, so another spelling or a link is caught), or the config over a file this
    project did not write (a user's, or one a user edited)."""
    path = Path(ckpt_path)
    companion = config_beside(path)
    for target in (path, companion):
        if any(same_file(target, source) for source in inputs):
            raise FileExistsError(errno.EEXIST, "is an input of this command; choose another --out", str(target))
    if companion.is_symlink() or (companion.exists() and not written_by_us(companion)):
        raise FileExistsError(errno.EEXIST, "exists and was not written by convert-weights or train (move it, or "
                                            "choose another --out)", str(companion))


def save_model(net, ckpt_path, cfg, extra: dict | None = None, owned: bool = False,
               dataset: tuple | None = None) -> None:
    """Write CKPT atomically, with `cfg` inside it (CONFIG_ENTRY) and beside it (CKPT with suffix
    .yaml, marked as ours); `extra` keys must start with optimizer./state; `dataset`, the data's
    (ClassTable, DatasetEval), goes in as DATASET_ENTRY. Refused before writing over a .yaml this
    project did not write (`check_checkpoint_target`), unless `owned`: the caller proved the target
    its own (train's RUN/checkpoints, held under the run's lock, where a .yaml from before the
    marker existed is replaced; convert-weights, which checked it against its inputs first)."""
    path = Path(ckpt_path)
    bad = [k for k in (extra or {}) if not k.startswith(EXTRA_PREFIXES)]
    if bad:
        raise ValueError(f"save_model: extra keys must start with {' or '.join(EXTRA_PREFIXES)}: {bad}")
    if not owned:
        check_checkpoint_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {**(extra or {}), CONFIG_ENTRY: config_text(cfg)}
    if dataset is not None:
        table, protocol = dataset
        entries[DATASET_ENTRY] = json.dumps({**table.to_dict(), "eval": dataclasses.asdict(protocol)})
    with private_output(path, ".ckpt") as tmp:
        ms.save_checkpoint(net, str(tmp), append_dict=entries)
        save_checkpoint_config(cfg, config_beside(path))


def checkpoint_dataset(ckpt_path) -> tuple[ClassTable, DatasetEval]:
    """(class table, eval protocol) of the data CKPT was trained on; Cityscapes' for a checkpoint
    written before it carried them. CheckpointError naming the file if it is unreadable or damaged."""
    path = checkpoint_file(ckpt_path)
    try:
        # The class token (every model has it, 4 x d_model bytes) too: MindSpore refuses a filter
        # that keeps nothing, as it would for a checkpoint without the entry.
        raw = ms.load_checkpoint(str(path), choice_func=lambda name: name in (DATASET_ENTRY, "encoder.cls_token"))
    except Exception as err:  # MindSpore raises ValueError/RuntimeError on corrupt files
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({cut(str(err).splitlines()[0])})") \
            from None
    text = raw.get(DATASET_ENTRY)
    if text is None:
        return CITYSCAPES, load_dataset("cityscapes").eval
    where = f"{path} (entry {DATASET_ENTRY})"
    if not isinstance(text, str) or len(text) > _MAX_DATASET_CHARS:
        raise CheckpointError(f"{where}: expected the data set as JSON text of at most {_MAX_DATASET_CHARS} characters")
    try:
        data = json.loads(text)
        protocol = DatasetEval(**{k: int(data["eval"][k]) for k in dataclasses.asdict(DatasetEval())})
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: unreadable data set ({type(err).__name__}: {cut(str(err))})") from None
    return ClassTable.from_dict(data, where), protocol


def checkpoint_classes(ckpt_path) -> ClassTable:
    """The class table CKPT predicts (CITYSCAPES for a checkpoint without one)."""
    return checkpoint_dataset(ckpt_path)[0]


def checkpoint_config(ckpt_path, config=None, protocol: DatasetEval | None = None) -> Config:
    """`--config` or the config beside CKPT (settings.files.resolve_config), a null model.n_cls
    taking the classes CKPT carries and null eval keys `protocol` (default: the eval protocol CKPT
    carries)."""
    checkpoint_file(ckpt_path)  # a release says "convert it first" before its missing config is named
    cfg = resolve_config(ckpt_path, config)
    table, carried = checkpoint_dataset(ckpt_path)
    if cfg.model.n_cls is None:
        cfg.model.n_cls = table.n_cls
    where = f"{ckpt_path} (entry {DATASET_ENTRY})" if protocol is None else "the data"
    return with_eval_protocol(cfg, protocol or carried, where)

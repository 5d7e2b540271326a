"""A data set is data, not code: a YAML file in mmseg's folder convention, schema-checked like a
config (docs/datasets.md). `configs/datasets/` holds the built-in ones (cityscapes, ade20k,
pascal_context, pascal_context_59); `--dataset` takes one of their names or a file of the user's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from base.class_table import CITYSCAPES, ClassTable, default_palette, table_problem
from base.names import split_name_problem
from settings.files import read_yaml
from settings.schema import ConfigError, build_section

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "configs" / "datasets"
LAYOUTS = ("folders", "cityscapes")  # cityscapes: leftImg8bit/ + gtFine/, labelIds mapped by the official table


@dataclass
class DatasetEval:
    """The data set's evaluation protocol: the short side resized to `infer_size` (0 = keep) with
    the long side at most `max_long_side` (0 = no limit), then windows of `window` every `stride`."""
    infer_size: int = 0
    max_long_side: int = 0
    window: int = 512
    stride: int = 512


@dataclass
class DatasetSpec:
    name: str = ""
    classes: List[str] = field(default_factory=list)
    palette: Optional[List[List[int]]] = None
    ignore_index: int = 255
    reduce_zero_label: bool = False
    layout: str = "folders"
    img_dir: str = "images/{split}"
    ann_dir: str = "annotations/{split}"
    img_suffix: str = ".jpg"
    seg_map_suffix: str = ".png"
    split_file: Optional[str] = None  # ids one per line, relative to img_dir (mmseg's ann_file)
    splits: Optional[dict] = None  # our split name -> its name in {split} (default: the same)
    eval: DatasetEval = field(default_factory=DatasetEval)

    def class_table(self) -> ClassTable:
        palette = self.palette if self.palette is not None else default_palette(len(self.classes))
        return ClassTable(self.name, tuple(self.classes), tuple(tuple(c) for c in palette), self.ignore_index)

    def source_split(self, split: str) -> str:
        """The name `{split}` stands for in the data set's paths."""
        return (self.splits or {}).get(split, split)


def builtin_names() -> list:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_dataset(name_or_path) -> DatasetSpec:
    """A built-in data set by name, or a dataset file; ConfigError `FILE: key: what` if refused."""
    text = str(name_or_path)
    path = BUILTIN_DIR / f"{text}.yaml" if split_name_problem(text) is None else Path(text)
    if not path.is_file():
        raise ConfigError(f"{text}: not a built-in data set ({', '.join(builtin_names())}) nor a dataset file")
    return dataset_from_dict(read_yaml(path), str(path))


def dataset_from_dict(data, source: str) -> DatasetSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a dataset file is a mapping of keys (name, classes, ...)")
    splits = data.get("splits")
    try:
        spec = build_section(DatasetSpec, {k: v for k, v in data.items() if k != "splits"}, "")
        spec.splits = _splits(splits)
        _check(spec)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return spec


def _splits(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError("splits: a mapping from our split names to the data set's, e.g. {train: training}")
    for key, name in value.items():
        problem = split_name_problem(key) or split_name_problem(name)
        if problem:
            raise ConfigError(f"splits: {key!r}: {name!r}: {problem}")
    return dict(value)


def _relative(key: str, value: str | None) -> None:
    if value is None:
        return
    parts = value.replace("{split}", "x").split("/")
    if not value or value.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in value:
        raise ConfigError(f"{key}: {value!r} must be a relative path under ROOT without '..'")


def _check(spec: DatasetSpec) -> None:
    problem = split_name_problem(spec.name)  # the data set's name follows the split names' rule
    if problem:
        raise ConfigError(f"name: {spec.name!r}: {problem}")
    if spec.layout not in LAYOUTS:
        raise ConfigError(f"layout: {spec.layout!r} is not one of {', '.join(LAYOUTS)}")
    problem = table_problem(spec.classes, spec.palette if spec.palette is not None else
                            default_palette(len(spec.classes)), spec.ignore_index)
    if problem:
        raise ConfigError(f"classes/palette/ignore_index: {problem}")
    _check_encoding(spec)
    for key in ("img_dir", "ann_dir", "split_file"):
        _relative(key, getattr(spec, key))
    if spec.split_file is None and spec.layout == "folders" and "{split}" not in spec.img_dir + spec.ann_dir:
        raise ConfigError("img_dir/ann_dir: name the split with {split}, or list each split's ids in split_file")
    for key in ("img_suffix", "seg_map_suffix"):
        if not getattr(spec, key).startswith(".") or "/" in getattr(spec, key):
            raise ConfigError(f"{key}: {getattr(spec, key)!r} must be a file suffix such as .jpg")
    e = spec.eval
    for key, value in dataclasses.asdict(e).items():
        if value < (1 if key in ("window", "stride") else 0):
            raise ConfigError(f"eval.{key}: {value} is out of range")
    if e.stride > e.window:
        raise ConfigError(f"eval.stride: {e.stride} must be at most the window ({e.window})")


def _check_encoding(spec: DatasetSpec) -> None:
    """The label encoding must keep classes and ignore apart: the cityscapes layout maps labelIds
    by the official table, so it is Cityscapes' classes or none; with reduce_zero_label the source
    values 1..N are the classes, so the ignore value must lie above N."""
    if spec.layout == "cityscapes":
        table = spec.class_table()
        if (table.names, table.palette, table.ignore_index) != (CITYSCAPES.names, CITYSCAPES.palette,
                                                                CITYSCAPES.ignore_index) or spec.reduce_zero_label:
            raise ConfigError("layout: cityscapes maps labelIds by the official table, so classes, palette and "
                              "ignore_index must be Cityscapes' (configs/datasets/cityscapes.yaml) and "
                              "reduce_zero_label false; use layout: folders for other classes")
    n = len(spec.classes)
    if spec.reduce_zero_label and spec.ignore_index <= n:
        raise ConfigError(f"ignore_index: {spec.ignore_index} is a class with reduce_zero_label (source values "
                          f"1..{n} are the {n} classes); it must be above {n}")

"""The classes a data set labels: names, palette and ignore index, in train-index order.

The table travels with the data (the build's manifest) and with the model (its checkpoints), so
every later stage (training, eval, predict, inspection) names and paints classes the way the data
defines them. Cityscapes' is `CITYSCAPES`, built from the official label table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from base.errors import UserError
from base.labels import CLASS_NAMES, IGNORE, TRAIN_LABELS

MAX_CLASSES = 255  # labels are stored as 8-bit PNGs, one value left for "ignore"


@dataclass(frozen=True)
class ClassTable:
    dataset: str
    names: tuple
    palette: tuple  # one (r, g, b) per class
    ignore_index: int = IGNORE

    @property
    def n_cls(self) -> int:
        return len(self.names)

    def palette_lut(self) -> np.ndarray:
        """(256, 3) uint8 RGB indexed by class; every other value (ignore) is black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[:self.n_cls] = np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)
        return lut

    def colorize(self, ids: np.ndarray) -> np.ndarray:
        """(H, W) class indices -> (H, W, 3) uint8 RGB in the palette."""
        return self.palette_lut()[ids]

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "classes": list(self.names),
                "palette": [list(map(int, c)) for c in self.palette], "ignore_index": int(self.ignore_index)}

    @classmethod
    def from_dict(cls, data, where) -> "ClassTable":
        """The table stored by `to_dict`; UserError naming `where` if it is not one."""
        try:
            table = cls(str(data["dataset"]), tuple(data["classes"]),
                        tuple(tuple(int(v) for v in c) for c in data["palette"]), int(data["ignore_index"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"not a class table ({type(err).__name__}: {str(err)[:80]})", where) from None
        problem = table_problem(table.names, table.palette, table.ignore_index)
        if problem:
            raise UserError(f"class table: {problem}", where)
        return table


def short_name(name: str, width: int | None = None) -> str:
    """A class's first name (ADE20K's names are synonym lists), cut to `width` characters."""
    return name.split(",")[0].strip()[:width]


def table_problem(names, palette, ignore_index: int) -> str | None:
    """What is wrong with a class table, or None."""
    if not 1 <= len(names) <= MAX_CLASSES:
        return f"{len(names)} classes; a data set has 1 to {MAX_CLASSES}"
    if any(not isinstance(n, str) or not n.strip() for n in names):
        return "every class needs a non-empty name"
    if len(set(names)) != len(names):
        return f"class names repeat: {sorted({n for n in names if list(names).count(n) > 1})[:5]}"
    if len(palette) != len(names):
        return f"{len(palette)} palette colours for {len(names)} classes"
    if any(len(c) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255 for v in c)
           for c in palette):
        return "every palette colour is [r, g, b] with integers 0..255"
    if not len(names) <= ignore_index <= 255:
        return f"ignore_index {ignore_index} must be in {len(names)}..255 (not a class)"
    return None


def default_palette(n: int) -> tuple:
    """mmseg's palette for a data set that names none: random colours from a fixed seed (42)."""
    return tuple(tuple(int(v) for v in c) for c in np.random.RandomState(42).randint(0, 255, size=(n, 3)))


CITYSCAPES = ClassTable("cityscapes", CLASS_NAMES, tuple(l.color for l in TRAIN_LABELS), IGNORE)


def check_classes(n_cls, table: ClassTable, source, data, trained: bool = False) -> int:
    """The one check that a model's classes are the data's: the class count to build, `n_cls` if
    it equals the table's, the table's if `n_cls` is None (a config leaving it to the data).
    UserError naming both numbers, `source` (the config or checkpoint) and `data` otherwise;
    `trained`: the model is a trained checkpoint, whose class count no setting can change."""
    if n_cls is None:
        return table.n_cls
    if n_cls != table.n_cls:
        fix = ("evaluate it on data of its own classes" if trained else
               f"set model.n_cls to {table.n_cls}, or to null to take it from the data")
        raise UserError(f"model.n_cls is {n_cls} in {source}, the data at {data} has {table.n_cls} classes "
                        f"({table.dataset}); {fix}")
    return n_cls

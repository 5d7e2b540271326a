"""The official Cityscapes label table and every lookup derived from it.

This is the single source for labelId -> trainId, trainId -> labelId, colours,
class names and categories; prep, evaluate and predict all import from here.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


IGNORE = 255
NUM_CLASSES = 19


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    has_instances: bool
    ignore_in_eval: bool
    color: tuple


# Transcribed from cityscapesscripts/helpers/labels.py (the official toolkit).
LABELS = (
    Label("unlabeled", 0, 255, "void", False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", True, False, (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", False, True, (0, 0, 142)),
)

NAME_TO_LABEL = {label.name: label for label in LABELS}
VALID_LABEL_IDS = frozenset(label.id for label in LABELS if label.id >= 0)

# trainId order: names, colours, labelIds and categories of the 19 evaluated classes.
TRAIN_LABELS = tuple(sorted((l for l in LABELS if 0 <= l.train_id < IGNORE), key=lambda l: l.train_id))
CLASS_NAMES = tuple(l.name for l in TRAIN_LABELS)
CATEGORIES = tuple(dict.fromkeys(l.category for l in TRAIN_LABELS))


def label_to_train_lut() -> np.ndarray:
    """The 256-entry labelId -> trainId table; every id outside the table maps to 255."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for label in LABELS:
        if label.id >= 0 and label.train_id >= 0:
            lut[label.id] = label.train_id
    return lut


def train_to_label_lut() -> np.ndarray:
    """The 256-entry trainId -> labelId table (benchmark submissions are labelIds); 255 -> 0."""
    lut = np.zeros(256, dtype=np.uint8)
    for label in TRAIN_LABELS:
        lut[label.train_id] = label.id
    return lut


def category_of_class() -> np.ndarray:
    """(19,) index into CATEGORIES for each trainId."""
    return np.array([CATEGORIES.index(l.category) for l in TRAIN_LABELS], dtype=np.int64)


"""Polygon annotations (`*_polygons.json`) drawn into label images with the official semantics.

Same rules as cityscapesscripts `json2labelImg` / `json2instanceImg`: PIL polygons in file order
(later ones on top) over an `unlabeled` background; objects flagged `deleted` are skipped; an
unknown name ending in `group` (e.g. `cargroup`) falls back to the name without it; labels with a
negative id (`license plate`) are never drawn. `make-sample` and `build-mindrecord` both draw here.
"""
from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image, ImageDraw

from prep.errors import PrepError
from base.labels import NAME_TO_LABEL


def resolve_label(name: str, where) -> object:
    if name not in NAME_TO_LABEL and name.endswith("group"):
        name = name[: -len("group")]
    if name not in NAME_TO_LABEL:
        raise PrepError(f"{where}: label {name!r} is not in the official Cityscapes table")
    return NAME_TO_LABEL[name]


def parse_polygons(data: bytes, where) -> tuple[int, int, list]:
    """(height, width, objects) of a polygons file's bytes; `where` names it in errors."""
    try:
        doc = json.loads(data)
        height, width = int(doc["imgHeight"]), int(doc["imgWidth"])
        objects = [(str(o["label"]), [tuple(p) for p in o["polygon"]], o.get("deleted", 0))
                   for o in doc["objects"]]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise PrepError(f"{where}: not a Cityscapes polygons file ({type(err).__name__}: {err})") from None
    if height <= 0 or width <= 0:
        raise PrepError(f"{where}: bad image size {height}x{width}")
    for index, (name, polygon, _deleted) in enumerate(objects):
        _check_polygon(polygon, f"{where}: object {index} ({name!r})")
    return height, width, objects


def _check_polygon(polygon, where: str) -> None:
    """PIL (and so the official json2labelImg) needs at least two points of two finite numbers."""
    for point in polygon:
        if len(point) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point):
            raise PrepError(f"{where}: polygon point {list(point)!r} is not two numbers")
    if len(polygon) < 2:
        raise PrepError(f"{where}: polygon has {len(polygon)} point(s); at least 2 are needed")


def draw(height: int, width: int, objects, where, instances: bool = False) -> np.ndarray:
    """The labelIds image (uint8), or with `instances` the instanceIds image (int32:
    labelId * 1000 + running index for instance classes, plain labelId otherwise)."""
    background = NAME_TO_LABEL["unlabeled"].id
    image = Image.new("I" if instances else "L", (width, height), background)
    drawer = ImageDraw.Draw(image)
    next_instance: dict[int, int] = {}
    for name, polygon, deleted in objects:
        if deleted:
            continue
        label = resolve_label(name, where)
        if label.id < 0:
            continue
        value = label.id
        # Official instance ids: only named (non-group) objects of instance classes get an index.
        if instances and label.has_instances and label.name == name:
            index = next_instance.get(label.id, 0)
            next_instance[label.id] = index + 1
            value = label.id * 1000 + index
        drawer.polygon(polygon, fill=value)
    return np.asarray(image, dtype=np.int32 if instances else np.uint8)


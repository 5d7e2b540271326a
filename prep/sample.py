"""`make-sample`: a small, deterministic, format-faithful Cityscapes tree of synthetic street scenes.

Each frame is a list of polygon objects in draw order (sky, buildings, nature, flat ground, street
furniture, vehicles, people, void objects such as the ego vehicle and license plates). The
label images are drawn from those polygons by `prep.polygons.draw` (the official semantics);
the photo is rendered from the same polygons with a colour and texture per class, jittered per
object, so a small model can learn the classes from appearance.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from base.atomic import write_bytes_atomic
from prep.errors import PrepError
from base.labels import LABELS
from base.memory import gib, physical_memory_bytes
from base.ownership import make_staging, swap_in, why_not_replaceable
from prep.polygons import draw

CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg",
              "hanover", "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm",
              "weimar", "zurich"),
    "val": ("frankfurt", "lindau", "munster"),
}
FRAMES_PER_CITY = {"train": 6, "val": 3}

# Appearance per label: base RGB, per-object colour jitter, texture kind, texture strength.
STYLE = {
    "sky": ((135, 180, 225), 15, "vgradient", 40),
    "building": ((120, 110, 100), 35, "windows", 45),
    "wall": ((170, 160, 140), 15, "noise", 10),
    "fence": ((150, 120, 90), 15, "vstripes", 50),
    "vegetation": ((70, 110, 40), 15, "noise", 40),
    "terrain": ((150, 160, 100), 15, "noise", 15),
    "road": ((80, 80, 85), 8, "noise", 6),
    "sidewalk": ((175, 150, 150), 12, "tiles", 30),
    "parking": ((110, 100, 110), 8, "noise", 6),
    "pole": ((155, 155, 160), 10, "smooth", 0),
    "polegroup": ((155, 155, 160), 10, "smooth", 0),
    "traffic light": ((40, 40, 35), 8, "lamps", 0),
    "traffic sign": ((235, 215, 30), 20, "smooth", 0),
    "car": ((30, 50, 150), 90, "smooth", 0),
    "truck": ((200, 200, 195), 25, "hstripes", 20),
    "bus": ((230, 170, 40), 25, "buswindows", 60),
    "train": ((200, 40, 40), 20, "buswindows", 60),
    "person": ((60, 30, 50), 30, "hstripes", 25),
    "rider": ((200, 40, 30), 25, "hstripes", 25),
    "motorcycle": ((25, 25, 30), 10, "noise", 25),
    "bicycle": ((110, 20, 35), 15, "smooth", 0),
    "license plate": ((240, 240, 240), 5, "hstripes", 60),
    "ego vehicle": ((20, 20, 25), 5, "smooth", 0),
    "static": ((120, 90, 60), 30, "noise", 20),
    "dynamic": ((160, 80, 160), 30, "noise", 20),
    "ground": ((100, 95, 70), 10, "noise", 10),
    "guard rail": ((190, 190, 200), 10, "hstripes", 30),
}


def sample_id(city: str, seq: int, frame: int = 19) -> str:
    return f"{city}_{seq:06d}_{frame:06d}"


def _quad(x0, y0, x1, y1):
    return [(int(x0), int(y0)), (int(x1), int(y0)), (int(x1), int(y1)), (int(x0), int(y1))]


def _ellipse(cx, cy, rx, ry, n=12):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(int(cx + rx * np.cos(a)), int(cy + ry * np.sin(a))) for a in t]


def scene(rng: np.random.Generator, h: int, w: int) -> list[dict]:
    """The frame's objects, in draw order: {"label", "polygon"[, "deleted"]}."""
    objs = []

    def add(label, polygon, **extra):
        objs.append({"label": label, "polygon": [[int(x), int(y)] for x, y in polygon], **extra})

    hz = _background(add, rng, h, w)
    _street_furniture(add, rng, h, w, hz)
    _things(add, rng, h, w, hz)
    _extras(add, rng, h, w)
    return objs


def _depth_scale(y: float, hz: int, h: int) -> float:
    """Perspective: things near the bottom are bigger."""
    return max((y - hz) / (h - hz), 0.05)


def _background(add, rng, h: int, w: int) -> int:
    """Sky, buildings, trees, walls and fences, the road with its sidewalks; returns the horizon row."""
    hz = int(h * rng.uniform(0.38, 0.5))          # horizon
    add("sky", _quad(0, 0, w - 1, hz + 2))
    x = int(-rng.uniform(0, 0.1) * w)
    while x < w:                                   # a row of buildings with gaps of sky
        bw = int(rng.uniform(0.12, 0.3) * w)
        if rng.random() < 0.85:
            top = int(rng.uniform(0.02, 0.3) * h)
            add("building", _quad(x, top, x + bw, hz + 4))
        x += bw + int(rng.uniform(0, 0.04) * w)
    for _ in range(rng.integers(1, 4)):            # trees
        cx, r = rng.uniform(0, w), rng.uniform(0.05, 0.12) * w
        cy = hz - rng.uniform(0.6, 1.4) * r
        add("vegetation", _quad(cx - r * 0.08, cy, cx + r * 0.08, hz + 3) if rng.random() < 0.5 else
            _ellipse(cx, hz - r * 0.3, r * 0.6, r * 0.3))
        add("vegetation", _ellipse(cx, cy, r, r * rng.uniform(0.7, 1.0), 16))
    if rng.random() < 0.5:
        x0 = rng.uniform(0, 0.6) * w
        add("wall", _quad(x0, hz - 0.14 * h, x0 + rng.uniform(0.15, 0.35) * w, hz + 6))
    if rng.random() < 0.6:
        x0 = rng.uniform(0, 0.7) * w
        add("fence", _quad(x0, hz - 0.12 * h, x0 + rng.uniform(0.15, 0.35) * w, hz + 5))
    if rng.random() < 0.3:
        add("guard rail", _quad(0.55 * w, hz - 0.02 * h, 0.9 * w, hz + 3))
    vx = w * rng.uniform(0.4, 0.6)                 # vanishing point of the road
    add("terrain", [(0, hz + 3), (vx - 0.15 * w, hz + 3), (0, hz + 0.12 * h)])
    add("road", [(0, h - 1), (w - 1, h - 1), (w - 1, int(0.82 * h)), (vx + 0.06 * w, hz + 3),
                 (vx - 0.06 * w, hz + 3), (0, int(0.82 * h))])
    add("sidewalk", [(0, int(0.80 * h)), (0, hz + 0.1 * h), (vx - 0.1 * w, hz + 3), (vx - 0.06 * w, hz + 3)])
    add("sidewalk", [(w - 1, int(0.80 * h)), (w - 1, hz + 4), (vx + 0.1 * w, hz + 3), (vx + 0.06 * w, hz + 3)])
    if rng.random() < 0.4:
        add("parking", [(w - 1, int(0.7 * h)), (w - 1, hz + 0.12 * h), (vx + 0.2 * w, hz + 0.06 * h)])
    if rng.random() < 0.3:
        add("ground", _quad(0, hz + 0.02 * h, 0.08 * w, hz + 0.08 * h))
    return hz


def _street_furniture(add, rng, h: int, w: int, hz: int) -> None:
    """Poles with signs and lights, sometimes a pole group."""
    for side in rng.permutation([0, 1])[: rng.integers(1, 3)]:   # poles with signs and lights
        px = rng.uniform(0.02, 0.3) * w if side == 0 else rng.uniform(0.7, 0.98) * w
        py = hz + rng.uniform(0.05, 0.2) * h
        s = _depth_scale(py, hz, h)
        pw, ph = max(4, 0.024 * w * s * 3), h * 0.5 * s + 0.25 * h
        add("pole", _quad(px - pw / 2, py - ph, px + pw / 2, py))
        if rng.random() < 0.7:
            r = max(6, 0.05 * w * s * 2)
            add("traffic sign", _ellipse(px, py - ph - r * 0.5, r, r, 8) if rng.random() < 0.5 else
                [(px - r, py - ph), (px + r, py - ph), (px, py - ph - 1.7 * r)])
        if rng.random() < 0.8:
            lw, lh = max(12, 0.07 * w * s * 2), max(24, 0.14 * w * s * 2)
            add("traffic light", _quad(px + pw / 2, py - ph * 0.8, px + pw / 2 + lw, py - ph * 0.8 + lh))
    if rng.random() < 0.3:
        px = rng.uniform(0.1, 0.9) * w
        add("polegroup", _quad(px, hz - 0.2 * h, px + 6, hz + 0.05 * h))


def _things(add, rng, h: int, w: int, hz: int) -> None:
    """Vehicles, people, riders and small objects, far to near."""
    things = ["car"] * 6 + ["person"] * 3 + ["truck", "bus", "rider", "static", "dynamic"]
    if rng.random() < 0.2:
        things.append("train")
    placed = sorted(((rng.uniform(hz + 0.04 * h, 0.97 * h), t) for t in rng.choice(things, rng.integers(4, 9))),
                    key=lambda p: p[0])
    for y, kind in placed:                          # far to near, so nearer objects are drawn on top
        s = _depth_scale(y, hz, h)
        cx = rng.uniform(0.05, 0.95) * w
        if kind in ("car", "truck", "bus", "train"):
            bw = {"car": 0.22, "truck": 0.3, "bus": 0.4, "train": 0.6}[kind] * w * s
            bh = {"car": 0.45, "truck": 0.8, "bus": 0.75, "train": 0.7}[kind] * bw
            body = [(cx - bw / 2, y), (cx - bw / 2, y - bh * 0.55), (cx - bw * 0.3, y - bh),
                    (cx + bw * 0.3, y - bh), (cx + bw / 2, y - bh * 0.55), (cx + bw / 2, y)]
            if kind != "car":
                body = _quad(cx - bw / 2, y - bh, cx + bw / 2, y)
            add("cargroup" if kind == "car" and rng.random() < 0.15 else kind, body)
            if kind == "car" and bw > 20:
                add("license plate", _quad(cx - bw * 0.1, y - bh * 0.3, cx + bw * 0.1, y - bh * 0.18))
        elif kind in ("person", "rider"):
            ph = 0.35 * h * s + 6
            pw = ph * 0.3
            if kind == "rider":
                bike = "bicycle" if rng.random() < 0.6 else "motorcycle"
                add(bike, [(cx - pw, y), (cx - pw, y - ph * 0.35), (cx + pw, y - ph * 0.35), (cx + pw, y)])
                y -= ph * 0.25
            add("persongroup" if kind == "person" and rng.random() < 0.15 else kind,
                [(cx - pw * 0.2, y - ph), (cx + pw * 0.2, y - ph), (cx + pw / 2, y - ph * 0.75),
                 (cx + pw / 2, y - ph * 0.3), (cx + pw * 0.2, y), (cx - pw * 0.2, y),
                 (cx - pw / 2, y - ph * 0.3), (cx - pw / 2, y - ph * 0.75)])
        else:
            r = 0.04 * w * s + 3
            add(kind, _ellipse(cx, y - r, r, r, 6))


def _extras(add, rng, h: int, w: int) -> None:
    """A lone bicycle, a deleted polygon, the ego vehicle."""
    if rng.random() < 0.6:                         # a bicycle standing alone
        bx, by = rng.uniform(0.05, 0.95) * w, rng.uniform(0.75, 0.85) * h
        add("bicycle", [(bx - 12, by), (bx - 12, by - 14), (bx + 12, by - 14), (bx + 12, by)])
    if rng.random() < 0.2:                         # an annotator's deleted polygon: never drawn
        add("car", _quad(0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h), deleted=1)
    if rng.random() < 0.7:                         # the ego vehicle's bonnet
        top = h * rng.uniform(0.9, 0.95)
        add("ego vehicle", [(0, h - 1), (0, h * 0.97), (w * 0.25, top), (w * 0.75, top), (w - 1, h * 0.97),
                            (w - 1, h - 1)])


def _texture(kind: str, strength: float, hh: int, ww: int, rng: np.random.Generator, y0: int) -> np.ndarray:
    """(hh, ww) additive pattern for one object's bounding box."""
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    if kind == "noise":
        return rng.normal(0, strength, (hh, ww)).astype(np.float32)
    if kind == "vgradient":
        return -strength * (yy + y0) / max(hh + y0, 1) + strength / 2
    if kind == "windows":
        p = rng.integers(10, 18)
        return np.where(((yy % p) > p * 0.4) & ((xx % p) > p * 0.45), -strength, strength * 0.3)
    if kind in ("vstripes", "hstripes"):
        p = 4 if kind == "vstripes" else 6
        axis = xx if kind == "vstripes" else yy
        return np.where((axis % p) < p / 2, strength / 2, -strength / 2)
    if kind == "tiles":
        return np.where(((yy % 8) < 1) | ((xx % 12) < 1), -strength, 0.0)
    if kind == "buswindows":
        return np.where((yy > hh * 0.2) & (yy < hh * 0.5) & ((xx % 14) > 3), -strength * 2, 0.0)
    if kind == "lamps":
        lamp = (xx - ww / 2) ** 2 + (yy % max(hh / 3, 1) - hh / 6) ** 2 < (ww / 3) ** 2
        return np.where(lamp, 180.0, 0.0)
    return np.zeros((hh, ww), np.float32)


def render(objects: list[dict], h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 photo: each drawn object's polygon filled with its class appearance, in draw order."""
    img = np.zeros((h, w, 3), np.float32)
    for obj in objects:
        if obj.get("deleted"):
            continue
        name = obj["label"] if obj["label"] in STYLE else obj["label"][: -len("group")]
        base, jitter, kind, strength = STYLE[name]
        pts = np.array(obj["polygon"])
        x0, y0 = np.clip(pts.min(0), 0, [w - 1, h - 1])
        x1, y1 = np.clip(pts.max(0), 0, [w - 1, h - 1])
        mask_img = Image.new("L", (int(x1 - x0 + 1), int(y1 - y0 + 1)), 0)
        ImageDraw.Draw(mask_img).polygon([(int(x - x0), int(y - y0)) for x, y in pts], fill=1)
        mask = np.asarray(mask_img, bool)
        colour = np.clip(np.array(base, np.float32) + rng.normal(0, jitter, 3), 0, 255)
        if name == "car" and rng.random() < 0.4:  # cars come in greys as well as colours
            colour[:] = rng.uniform(20, 230)
        patch = colour + _texture(kind, strength, *mask.shape, rng, int(y0))[..., None]
        region = img[y0:y1 + 1, x0:x1 + 1]
        region[mask] = patch[mask]
    img += rng.normal(0, 4, img.shape).astype(np.float32)   # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


_COLORS = np.zeros((256, 4), np.uint8)
for _label in LABELS:
    if _label.id >= 0:
        _COLORS[_label.id] = (*_label.color, 255)


def write_frame(root: Path, split: str, city: str, sid: str, h: int, w: int, rng: np.random.Generator) -> None:
    objects = scene(rng, h, w)
    image = render(objects, h, w, rng)
    polygons = [(o["label"], [tuple(p) for p in o["polygon"]], o.get("deleted", 0)) for o in objects]
    where = f"{sid} polygons"
    label_ids = draw(h, w, polygons, where)
    instance_ids = draw(h, w, polygons, where, instances=True)
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    files = {
        img_dir / f"{sid}_leftImg8bit.png": _png(image[..., ::-1]),
        gt_dir / f"{sid}_gtFine_polygons.json": json.dumps({"imgHeight": h, "imgWidth": w, "objects": objects},
                                                           indent=1).encode(),
        gt_dir / f"{sid}_gtFine_labelIds.png": _png(label_ids),
        gt_dir / f"{sid}_gtFine_instanceIds.png": _png(instance_ids.astype(np.uint16)),
        gt_dir / f"{sid}_gtFine_color.png": _png(cv2.cvtColor(_COLORS[label_ids], cv2.COLOR_RGBA2BGRA)),
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def frames(split: str, n: int) -> list[tuple[str, str]]:
    """(city, id) of the split's n frames: real city names, `{city}_{seq:06d}_000019` names."""
    cities = CITIES[split]
    used = cities[: min(len(cities), max(1, -(-n // FRAMES_PER_CITY[split])))]
    return [(used[i % len(used)], sample_id(used[i % len(used)], i // len(used))) for i in range(n)]


SAMPLE_KIND = "make-sample tree"
FRAME_BYTES_PER_PIXEL = 64  # peak while one frame is drawn and encoded (float32 photo, noise, labels, PNGs)


def make_sample(out, n_train: int = 24, n_val: int = 8, height: int = 256, width: int = 512, seed: int = 0,
                progress=None) -> dict[str, int]:
    """Write the tree into a hidden sibling and swap it in whole: an earlier make-sample tree is
    replaced (no stale frames mix in), any other non-empty folder is refused (base/ownership.py)."""
    need, have = FRAME_BYTES_PER_PIXEL * height * width, physical_memory_bytes()
    if need > have:
        raise PrepError(f"--height {height} --width {width}: one frame needs about {gib(need)} of memory while it "
                        f"is drawn, more than this machine's {gib(have)}")
    out = Path(out)
    reason = why_not_replaceable(out, SAMPLE_KIND)
    if reason is not None:
        raise PrepError(f"{out}: {reason}; make-sample writes into a new or empty folder")
    staging = make_staging(out)
    try:
        counts = {}
        for split_index, (split, n) in enumerate((("train", n_train), ("val", n_val))):
            for i, (city, sid) in enumerate(frames(split, n)):
                rng = np.random.default_rng([seed, split_index, i])
                write_frame(staging, split, city, sid, height, width, rng)
                if progress:
                    progress.update(1, postfix=sid)
            counts[split] = n
        swap_in(staging, out, SAMPLE_KIND)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


"""Finding and pairing Cityscapes files: `leftImg8bit/{split}/{city}/` with `gtFine/` or `gtCoarse/`.

Every name is checked against the official pattern `{city}_{seq:06d}_{frame:06d}_{suffix}` (city
as in its folder); anything else, any image without a label and any label without an image is
an error that lists the offending files. An entry that cannot be read (a symlink loop, a broken
link, a folder that cannot be listed) is reported as what it is. Only names are checked here;
pixels are checked when each sample is converted.
"""
from __future__ import annotations

import errno
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from mindrecords.schema import check_path_field
from prep.errors import PrepError

LABEL_DIRS = {"fine": "gtFine", "coarse": "gtCoarse"}
_ID = r"(?P<id>(?P<city>[a-z][a-z-]*)_(?P<seq>\d{6})_(?P<frame>\d{6}))"
IMAGE_RE = re.compile(_ID + r"_leftImg8bit\.png")
# Every file the official gt folders hold (train-id images are what createTrainIdLabelImgs adds).
LABEL_SUFFIXES = ("labelIds.png", "instanceIds.png", "color.png", "polygons.json",
                  "labelTrainIds.png", "instanceTrainIds.png")
MAX_LISTED = 20


@dataclass(frozen=True)
class Sample:
    id: str
    city: str
    image: str   # path relative to the root
    label: str   # `_labelIds.png`, or `_polygons.json` when that is all there is

    @property
    def label_is_polygons(self) -> bool:
        return self.label.endswith(".json")


def _listing(paths) -> str:
    paths = sorted(str(p) for p in paths)
    more = f"\n  ... and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    return "\n  " + "\n  ".join(paths[:MAX_LISTED]) + more


def _reason(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno == errno.ENOENT and path.is_symlink():
        return "broken symlink"
    return err.strerror or str(err)


def _entries(folder: Path, faults: list) -> list[tuple[Path, int]]:
    """(path, st_mode) of `folder`'s visible entries, sorted; what cannot be read goes to `faults`."""
    try:
        paths = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        faults.append((folder, f"cannot list the folder ({_reason(folder, err)})"))
        return []
    entries = []
    for path in paths:
        try:
            entries.append((path, path.stat().st_mode))
        except OSError as err:
            faults.append((path, _reason(path, err)))
    return entries


def _is_dir(path: Path) -> bool:
    """Whether `path` is a folder (False if absent); PrepError for one that cannot be examined."""
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR) and not path.is_symlink():
            return False
        raise PrepError(f"{path}: {_reason(path, err)}") from None


def _scan(split_dir: Path, pattern: re.Pattern, kind: str) -> dict[str, dict[str, Path]]:
    """{sample id: {suffix: path}} for every file under split_dir/{city}/; bad names raise."""
    found: dict[str, dict[str, Path]] = {}
    bad, faults = [], []
    for city_dir, mode in _entries(split_dir, faults):
        if not stat.S_ISDIR(mode):
            bad.append(city_dir)
            continue
        for path, mode in _entries(city_dir, faults):
            m = pattern.fullmatch(path.name)
            if not m or m["city"] != city_dir.name or not stat.S_ISREG(mode):
                bad.append(path)
                continue
            found.setdefault(m["id"], {})[m.groupdict().get("suffix") or "image"] = path
    if faults:
        more = f"\n  ... and {len(faults) - MAX_LISTED} more" if len(faults) > MAX_LISTED else ""
        raise PrepError("\n  ".join(f"{path}: {reason}" for path, reason in faults[:MAX_LISTED]) + more)
    if bad:
        raise PrepError(f"{split_dir}: {len(bad)} {kind} entries are not Cityscapes names "
                        f"(expected {{city}}/{{city}}_{{seq:06d}}_{{frame:06d}}_...):{_listing(bad)}")
    return found


def discover_split(root, split: str, labels: str = "fine") -> list[Sample]:
    """The split's samples sorted by id; raises PrepError naming what is missing or wrong."""
    root = Path(root)
    gt = LABEL_DIRS[labels]
    image_dir, label_dir = root / "leftImg8bit" / split, root / gt / split
    for d in (image_dir, label_dir):
        if not _is_dir(d):
            raise PrepError(f"{d}: missing folder (split {split!r} not found under {root})")
    label_re = re.compile(_ID + rf"_{gt}_(?P<suffix>{'|'.join(re.escape(s) for s in LABEL_SUFFIXES)})")
    images = _scan(image_dir, IMAGE_RE, "image")
    labels_found = _scan(label_dir, label_re, "label")
    samples, no_label = [], []
    for sid in sorted(images):
        files = labels_found.get(sid, {})
        label = files.get("labelIds.png") or files.get("polygons.json")
        if label is None:
            no_label.append(images[sid]["image"])
            continue
        city = sid.rsplit("_", 2)[0]
        for name, value in (("id", sid), ("city", city)):  # the name pattern implies it; one rule for all
            try:
                check_path_field(name, value, str(images[sid]["image"]))
            except ValueError as err:
                raise PrepError(str(err)) from None
        samples.append(Sample(sid, city, str(images[sid]["image"].relative_to(root)),
                              str(label.relative_to(root))))
    no_image = [p for sid, files in labels_found.items() if sid not in images for p in files.values()]
    problems = []
    if no_label:
        problems.append(f"{len(no_label)} images have no _{gt}_labelIds.png or _{gt}_polygons.json:"
                        + _listing(no_label))
    if no_image:
        problems.append(f"{len(no_image)} label files have no image in {image_dir}:" + _listing(no_image))
    if problems:
        raise PrepError(f"{root}: unpaired files in split {split!r}\n" + "\n".join(problems))
    if not samples:
        raise PrepError(f"{image_dir}: split {split!r} is empty")
    return samples


def discover(root, splits, labels: str = "fine") -> dict[str, list[Sample]]:
    root = Path(root)
    if not _is_dir(root):
        raise PrepError(f"{root}: Cityscapes root not found")
    if not _is_dir(root / "leftImg8bit"):
        raise PrepError(f"{root}: no leftImg8bit/ folder (is this a Cityscapes root?)")
    return {split: discover_split(root, split, labels) for split in splits}

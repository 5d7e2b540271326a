"""Finding and pairing a data set's files: Cityscapes' `leftImg8bit/{split}/{city}/` with `gtFine/`
or `gtCoarse/`, or a folder data set's `img_dir` with `ann_dir` (settings/datasets.py).

Cityscapes: every name is checked against the official pattern `{city}_{seq:06d}_{frame:06d}_{suffix}`
(city as in its folder). A folder data set: every file with the image suffix under the image folder
(at any depth) pairs with the file of the same path and the label suffix under the label folder;
with a split list, the listed ids do. Any image without a label and any label without an image is
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
from settings.datasets import DatasetSpec

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
    _raise_faults(faults)
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
    _check_paired(root, split, no_label, no_image, f"_{gt}_labelIds.png or _{gt}_polygons.json", image_dir)
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


def _source_dir(template: str, spec: DatasetSpec, split: str) -> str:
    return template.replace("{split}", spec.source_split(split))


def source_folders(spec: DatasetSpec, splits) -> list[str]:
    """The folders under ROOT a folder data set's splits are read from."""
    return sorted({_source_dir(t, spec, s) for s in splits for t in (spec.img_dir, spec.ann_dir)})


def dataset_root(root, spec: DatasetSpec, splits) -> Path:
    """ROOT, or its one subfolder that holds the data set (ADE20K's ROOT may be the folder above
    `ADEChallengeData2016`); PrepError naming what is missing."""
    root = Path(root)
    if not _is_dir(root):
        raise PrepError(f"{root}: {spec.name} root not found")
    first = _source_dir(spec.img_dir, spec, splits[0])
    if _is_dir(root / first):
        return root
    holders = [path for path, mode in _entries(root, []) if stat.S_ISDIR(mode) and _is_dir(path / first)]
    if len(holders) == 1:
        return holders[0]
    raise PrepError(f"{root}: no {first}/ folder (is this a {spec.name} root?)")


def _files(folder: Path, suffix: str, faults: list, seen: set | None = None) -> dict[str, Path]:
    """{path under `folder` without the suffix: path} of every file ending in `suffix`, at any depth."""
    seen = seen if seen is not None else {folder.resolve()}
    found = {}
    for path, mode in _entries(folder, faults):
        if stat.S_ISDIR(mode):
            real = path.resolve()
            if real in seen:
                faults.append((path, "symlink loop (a folder reached twice)"))
                continue
            seen.add(real)
            found.update({f"{path.name}/{key}": p for key, p in _files(path, suffix, faults, seen).items()})
        elif stat.S_ISREG(mode) and path.name.endswith(suffix) and len(path.name) > len(suffix):
            found[path.name[:-len(suffix)]] = path
    return found


def _raise_faults(faults: list) -> None:
    if faults:
        more = f"\n  ... and {len(faults) - MAX_LISTED} more" if len(faults) > MAX_LISTED else ""
        raise PrepError("\n  ".join(f"{path}: {reason}" for path, reason in faults[:MAX_LISTED]) + more)


def _listed_ids(path: Path, split: str) -> list[str]:
    """The ids the split's list file names, one a line, each a safe path."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PrepError(f"{path}: missing split list of split {split!r}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PrepError(f"{path}: unreadable split list ({getattr(err, 'strerror', None) or err})") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise PrepError(f"{path}: ids listed twice: {', '.join(repeated[:MAX_LISTED])}")
    for i in ids:
        try:
            check_path_field("id", i, str(path))
        except ValueError as err:
            raise PrepError(str(err)) from None
    return ids


def _folder_pairs(root: Path, spec: DatasetSpec, split: str, image_dir: Path, label_dir: Path):
    """({id: image path}, {id: label path}) of the split, by list file or by scanning both folders."""
    if spec.split_file is None:
        faults = []
        images = _files(image_dir, spec.img_suffix, faults)
        labels = _files(label_dir, spec.seg_map_suffix, faults)
        _raise_faults(faults)
        return images, labels
    path = root / _source_dir(spec.split_file, spec, split)
    ids = _listed_ids(path, split)
    images = {i: image_dir / f"{i}{spec.img_suffix}" for i in ids}
    absent = [p for p in images.values() if not p.is_file()]
    if absent:
        raise PrepError(f"{path}: {len(absent)} listed images do not exist:" + _listing(absent))
    return images, {i: p for i in ids if (p := label_dir / f"{i}{spec.seg_map_suffix}").is_file()}


def discover_folders(root: Path, spec: DatasetSpec, split: str) -> list[Sample]:
    """A folder data set's split, sorted by id: `id` is the image's path under its folder without the
    suffix, `city` its subfolder ('' in a flat folder); PrepError naming what is missing or wrong."""
    image_dir, label_dir = (root / _source_dir(t, spec, split) for t in (spec.img_dir, spec.ann_dir))
    for d in (image_dir, label_dir):
        if not _is_dir(d):
            raise PrepError(f"{d}: missing folder (split {split!r} not found under {root})")
    images, labels = _folder_pairs(root, spec, split, image_dir, label_dir)
    samples = []
    for sid in sorted(set(images) & set(labels)):
        city = sid.rpartition("/")[0]
        for name, value in (("id", sid), ("city", city)):
            try:
                check_path_field(name, value, str(images[sid]))
            except ValueError as err:
                raise PrepError(str(err)) from None
        samples.append(Sample(sid, city, str(images[sid].relative_to(root)), str(labels[sid].relative_to(root))))
    _check_paired(root, split, [images[i] for i in images if i not in labels],
                  [labels[i] for i in labels if i not in images], f"{spec.seg_map_suffix} label in {label_dir}",
                  image_dir)
    if not samples:
        raise PrepError(f"{image_dir}: split {split!r} is empty (no *{spec.img_suffix} files)")
    return samples


def _check_paired(root: Path, split: str, no_label: list, no_image: list, label_kind: str, image_dir: Path) -> None:
    """PrepError listing the images without a label and the labels without an image."""
    problems = []
    if no_label:
        problems.append(f"{len(no_label)} images have no {label_kind}:" + _listing(no_label))
    if no_image:
        problems.append(f"{len(no_image)} label files have no image in {image_dir}:" + _listing(no_image))
    if problems:
        raise PrepError(f"{root}: unpaired files in split {split!r}\n" + "\n".join(problems))

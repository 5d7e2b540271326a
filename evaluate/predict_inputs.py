"""What `predict` was given: files, folders (recursive) and globs, resolved to images and videos.

Rules (checked before the model loads):
- a file named on the command line must be readable, or predict stops (`error: PATH: ...`);
- files found in a folder or by a glob are images by extension; an unreadable one is listed and
  skipped, and only if none of them can be read is it an error;
- outputs never overwrite an input, and two inputs never share an output name;
- outputs replace only files predict wrote, proven by its log in OUT (base/ownership.py's
  WrittenFiles); predict's earlier outputs found in a folder or by a glob are not inputs, so
  `predict DIR --out DIR/pred` can be rerun.
Outputs of a folder's files keep their place below the folder (OUT/sub/dir/{stem}.png), so
equal stems in different subfolders stay apart; files and glob matches go to OUT/{stem}.png.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from PIL import Image, UnidentifiedImageError

from base.errors import UserError
from base.images import ImageError, read_info
from base.ownership import WRITTEN, WrittenFiles, file_key

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
GLOB_CHARS = set("*?[")
KIND = "predict"  # the command named in the ownership log and the output folder's lock
FRAME_FILE = re.compile(r"frame_\d{6,}\.png")  # what predict writes into a video's frame folder


class PredictError(UserError, ValueError):
    """A bad input image or output location; the message names the file."""


@dataclass
class Item:
    path: Path
    out_stem: str  # relative to OUT, without suffix: "name" or "sub/dir/name"
    kind: str  # "image" | "video"
    found: bool = False  # found in a folder or by a glob (not named): unreadable = skipped


@dataclass
class Inputs:
    items: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (path, reason) found in a folder/glob, unreadable

    @property
    def images(self) -> int:
        return sum(i.kind == "image" for i in self.items)

    @property
    def videos(self) -> int:
        return sum(i.kind == "video" for i in self.items)


def _image_problem(path: Path) -> str | None:
    """None if the header is one base/images.py accepts (mode, size bounds) and PIL verifies the
    file (a PNG's every CRC), else why not. Pixels are decoded later, once."""
    try:
        read_info(path)
        with Image.open(path) as im:
            im.verify()
    except ImageError as err:
        return err.reason
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        return f"not a readable image ({err})"
    return None


def _video_problem(path: Path) -> str | None:
    """None if OpenCV can open the video and decode its first frame, else why not."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return "not a readable video (OpenCV cannot open it)"
        ok, _ = cap.read()
        return None if ok else "not a readable video (no frame could be decoded)"
    finally:
        cap.release()


def _problem(path: Path, kind: str) -> str | None:
    return _video_problem(path) if kind == "video" else _image_problem(path)


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"


def _found_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def frame_path(frame_dir: Path, n: int) -> Path:
    return frame_dir / f"frame_{n:06d}.png"


class _EarlierOutputs:
    """`path in earlier`: whether predict wrote `path`, proven by the log of a folder above it."""

    def __init__(self, known: WrittenFiles | None = None):
        self.logs: dict[Path, WrittenFiles | None] = {} if known is None else {known.root: known}

    def _log(self, folder: Path) -> WrittenFiles | None:
        if folder not in self.logs:
            try:
                self.logs[folder] = WrittenFiles(folder, KIND) if (folder / WRITTEN).is_file() else None
            except OSError:  # an unreadable log proves nothing
                self.logs[folder] = None
        return self.logs[folder]

    def __contains__(self, path: Path) -> bool:
        path = Path(os.path.abspath(path))
        return any((log := self._log(folder)) is not None and log.proves(path) for folder in path.parents)


def resolve_inputs(args, written: WrittenFiles | None = None) -> Inputs:
    """Expand the command line's arguments; raise PredictError on an explicit bad file.
    `written`: OUT's log, so an earlier output found here is proven once for the whole run."""
    inputs = Inputs()
    found, searched = 0, []
    earlier = _EarlierOutputs(written)
    for arg in map(str, args):
        path = Path(arg)
        if path.is_dir():
            matches = [(p, p.relative_to(path).with_suffix("").as_posix()) for p in _found_in(path)
                       if p not in earlier]
            if not matches:
                raise PredictError(f"{path}: no images in this folder (extensions {', '.join(IMAGE_EXTENSIONS)})")
        elif not path.exists() and GLOB_CHARS & set(arg):
            hits = sorted(Path(p) for p in glob.glob(arg, recursive=True))
            matches = [(p, p.stem) for p in hits
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p not in earlier]
            if not matches:
                raise PredictError(f"{arg}: no image matches this pattern")
        else:
            if not path.is_file():
                raise PredictError(f"{path}: image not found")
            kind = _kind(path)
            problem = _problem(path, kind)
            if problem:
                raise PredictError(f"{path}: {problem}")
            inputs.items.append(Item(path, path.stem, kind))
            continue
        searched.append(arg)
        for p, stem in matches:
            found += 1
            problem = _image_problem(p)
            if problem:
                inputs.skipped.append((p, problem))
            else:
                inputs.items.append(Item(p, stem, "image", found=True))
    if found and not inputs.items:
        raise PredictError(f"{', '.join(searched)}: none of the {found} images found can be read "
                           f"(first: {inputs.skipped[0][0]}: {inputs.skipped[0][1]})")
    return inputs


def output_paths(out_dir, item: Item, save_probs: bool, overlay: bool, frames: bool) -> list[Path]:
    """Every path predict writes for `item` (a video's frame folder counts as one)."""
    base = Path(out_dir) / item.out_stem
    if item.kind == "video":
        suffix = ".avi" if item.path.suffix.lower() == ".avi" else ".mp4"
        return [base.with_name(base.name + suffix)] + ([base.with_name(base.name + "_frames")] if frames else [])
    return ([base.with_name(base.name + ".png"), base.with_name(base.name + "_color.png")]
            + ([base.with_name(base.name + "_overlay.png")] if overlay else [])
            + ([base.with_name(base.name + "_probs.npy")] if save_probs else []))


def check_outputs(inputs: Inputs, out_dir, save_probs: bool, overlay: bool, frames: bool,
                  written: WrittenFiles) -> None:
    """No output overwrites an input or a file predict did not write (`written`: OUT's log, whose
    proofs the writes then rely on, so each existing output is read once); no two inputs write the
    same output. Run under OUT's lock, before the model loads."""
    sources = {file_key(i.path): i.path for i in inputs.items}
    taken = {}
    for item in inputs.items:
        for out in output_paths(out_dir, item, save_probs, overlay, frames):
            key = file_key(out)
            if key in sources:
                raise PredictError(f"{out}: is an input; predict never overwrites an input (choose another --out)")
            if key in taken:
                raise PredictError(f"{item.path}: same output {out} as {taken[key]}")
            taken[key] = item.path
            for path in _replaced(out, item):
                reason = written.why_not_ours(path)
                if reason is not None:
                    raise PredictError(f"{path}: {reason}")


def _replaced(out: Path, item: Item) -> list[Path]:
    """The existing paths that writing `out` replaces (for a video's frame folder: its frames)."""
    if item.kind == "video" and out.name.endswith("_frames") and out.is_dir() and not out.is_symlink():
        return [p for p in out.iterdir() if FRAME_FILE.fullmatch(p.name)]
    return [out]

"""Folders the project created, provably: a marker listing every file with its size and CRC-32.

A command that replaces an earlier output folder whole (a prediction set, a generated sample
tree) deletes it only if `why_not_ours` finds nothing wrong: the marker is the project's (tool and
kind match) and the folder holds exactly the files it lists, byte for byte (size and CRC-32). A
folder with a user's file added, a file edited, or a mere `manifest.json` of the same name is
never deleted. New folders are written as a hidden sibling and swapped in by rename
(`swap_in`), so a reader never sees half a folder and an interrupted run changes nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from base.checksums import file_crc32

MARKER = ".segmenter-owned.json"
TOOL = "segmenter-mindspore"


def _entries(folder: Path):
    """(relative posix path, path) of every non-directory entry below `folder`, the marker excluded."""
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel != MARKER:
                yield rel, path


def write_marker(folder, kind: str, info: dict | None = None) -> None:
    """Record every file now under `folder` as the project's output of this `kind`."""
    from base.atomic import write_text_atomic

    folder = Path(folder)
    files = {rel: [path.stat().st_size, file_crc32(path)] for rel, path in sorted(_entries(folder))}
    doc = {"tool": TOOL, "kind": kind, "info": info or {}, "files": files}
    write_text_atomic(folder / MARKER, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def why_not_ours(folder, kind: str) -> str | None:
    """None if `folder` is exactly an output of `kind` this project wrote; else the reason it is not."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / MARKER).read_text())
    except FileNotFoundError:
        return f"no {MARKER} (not written by this project)"
    except (OSError, ValueError) as err:
        return f"unreadable {MARKER} ({err})"
    if not isinstance(doc, dict) or doc.get("tool") != TOOL or doc.get("kind") != kind \
            or not isinstance(doc.get("files"), dict):
        return f"{MARKER} does not describe a {kind}"
    listed = doc["files"]
    for rel, path in _entries(folder):
        if rel not in listed:
            return f"holds {rel}, which this project did not write"
        if path.is_symlink() or not path.is_file():
            return f"{rel} is not a regular file"
        size, crc = listed[rel]
        if path.stat().st_size != size or file_crc32(path) != crc:
            return f"{rel} was changed after this project wrote it"
    missing = [rel for rel in listed if not (folder / rel).is_file()]
    if missing:
        return f"{missing[0]} is missing"
    return None


def why_not_replaceable(folder, kind: str) -> str | None:
    """None if `folder` may be replaced by a new `kind`: absent, empty, or provably ours."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_symlink() or not folder.is_dir():
        return "exists and is not a folder"
    if not any(folder.iterdir()):
        return None
    reason = why_not_ours(folder, kind)
    return None if reason is None else f"not empty and not an earlier {kind}: {reason}"


def make_staging(folder) -> Path:
    """A hidden sibling of `folder` to build the new content in (same file system, so rename works)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; outputs are ordinary shareable folders
    return staging


def swap_in(staging: Path, folder, kind: str) -> None:
    """Replace `folder` by `staging` (marker written first); the old one, if provably ours, is deleted."""
    folder = Path(folder)
    write_marker(staging, kind)
    reason = why_not_replaceable(folder, kind)  # checked again: the folder may have changed meanwhile
    if reason is not None:
        raise FileExistsError(reason)
    old = None
    if folder.exists():
        # rename cannot replace a non-empty folder: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / "set")
    os.replace(staging, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

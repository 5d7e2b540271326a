"""What the project wrote, provably: folders (a marker listing every file with its size and
CRC-32) and single files in a user's folder (a log of the files written there, same proof).

A command that replaces an earlier output folder whole (a prediction set, a generated sample
tree) deletes it only if `why_not_ours` finds nothing wrong: the marker is the project's (tool and
kind match) and the folder holds exactly the files it lists, byte for byte (size and CRC-32). A
folder with a user's file added, a file edited, or a mere `manifest.json` of the same name is
never deleted. New folders are written as a hidden sibling and swapped in by rename
(`swap_in`), so a reader never sees half a folder and an interrupted run changes nothing.

Outputs written one by one into a folder that may hold the user's files too (`predict --out`)
are proven by `WrittenFiles`; an output file the user names (`eval --json`) may replace anything
but the run's own inputs (`why_not_output`).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from base.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from base.checksums import crc32_hex, file_crc32
from base.locks import LOCK_NAME, file_identity, folder_lock

MARKER = ".segmenter-owned.json"
WRITTEN = ".segmenter-written.jsonl"
TOOL = "segmenter-mindspore"
# The project's bookkeeping inside an output folder: never counted as content.
BOOKKEEPING = (MARKER, WRITTEN, LOCK_NAME)


def _entries(folder: Path):
    """(relative posix path, path) of every non-directory entry below `folder`, the marker excluded."""
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel not in BOOKKEEPING:
                yield rel, path


def write_marker(folder, kind: str, info: dict | None = None) -> None:
    """Record every file now under `folder` as the project's output of this `kind`."""

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
    if all(p.name in BOOKKEEPING for p in folder.iterdir()):
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


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except RuntimeError:  # a symlink loop (Python 3.11 raises RuntimeError for it)
        raise OSError(errno.ELOOP, "a symlink loop", str(path)) from None


def file_key(path):
    """A hashable name for the file `path` names: its (device, inode) where it exists, so a hard
    link, a symlink or another spelling of it has the same key; else its resolved path (a file
    about to be created). Two paths name one file exactly when their keys are equal."""
    try:
        identity = file_identity(path)
    except OSError:  # a path through a file, an unreadable folder: compared by name
        identity = None
    return identity if identity is not None else _resolved(Path(path))


def same_file(a, b) -> bool:
    """Whether paths `a` and `b` name one file (`file_key`)."""
    return file_key(a) == file_key(b)


def _relation(path: Path, other: Path) -> str | None:
    """"is" if `path` and `other` are one file (`same_file`), "is inside" if `path` lies below
    the folder `other`, else None."""
    if same_file(path, other):
        return "is"
    return "is inside" if _resolved(other) in _resolved(path).parents else None


def why_not_output(path, protected) -> str | None:
    """None if `path`, an output file the user named, may be written (created, or replaced if it
    exists); else why not. `protected`: (role, path) pairs naming what the same run reads (its
    checkpoint, configs, data folder, ...); `path` may be none of them nor lie inside one. A
    symlink, hard link or another spelling of one of them is caught."""
    path = Path(path)
    for role, other in protected:
        relation = None if other is None else _relation(path, Path(other))
        if relation:
            return f"{relation} {role} of this run"
    return None


@dataclass
class Staged:
    """A file being written for `WrittenFiles.atomic`: its temporary name, and its size and CRC-32
    where the writer computed them while writing (otherwise the file is read back once to log it)."""
    tmp: Path
    size: int | None = None
    crc: str | None = None


class WrittenFiles:
    """The files a command wrote into `folder`, a folder that may hold the user's files too.

    The proof is an append-only log in the folder (WRITTEN): one JSON line per file, with its path
    below the folder, size, CRC-32 and the command, appended before the file is renamed into place.
    A file is the command's if its size and CRC match a line for its path: that content is one the
    command wrote there. An interrupted run leaves at most a line for content that never arrived,
    never a file without its line; a torn line proves nothing.

    Made under the folder's lock (`output_folder`), an instance reads each existing file at most
    once: a file it proved, or wrote itself, stays proven for the rest of the command."""

    def __init__(self, folder, kind: str):
        self.folder, self.kind = Path(folder), kind
        self.root = Path(os.path.abspath(folder))
        self.versions = self._read()
        self.proven: set[str] = set()  # keys of files proven (or written) by this instance

    def _read(self) -> dict:
        versions: dict[str, set] = {}
        try:
            fh = open(self.folder / WRITTEN, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return versions
        with fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    key, version = rec["file"], (int(rec["size"]), str(rec["crc32"]))
                    if rec["by"] != self.kind or not isinstance(key, str):
                        continue
                except (ValueError, KeyError, TypeError):
                    continue  # blank, torn by a crash, or not the project's: proves nothing
                versions.setdefault(key, set()).add(version)
        return versions

    def _key(self, path: Path) -> str | None:
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            return None

    def proves(self, path) -> bool:
        """Whether `path`, a regular file below the folder, holds content this command wrote there."""
        path = Path(path)
        key = self._key(path)
        if key is None:
            return False
        if key in self.proven:
            return True
        versions = self.versions.get(key)
        if not versions or path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        if any(s == size for s, _ in versions) and (size, file_crc32(path)) in versions:
            self.proven.add(key)
            return True
        return False

    def why_not_ours(self, path) -> str | None:
        """None if writing `path` replaces nothing but this command's own earlier output."""
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            return None
        return None if self.proves(path) else f"exists and was not written by {self.kind}"

    def _check(self, path: Path) -> None:
        reason = self.why_not_ours(path)
        if reason is not None:
            raise FileExistsError(errno.EEXIST, reason, str(path))

    def _log(self, path: Path, size: int, crc: str) -> None:
        key = self._key(path)
        line = json.dumps({"file": key, "size": size, "crc32": crc, "by": self.kind})
        with open(self.folder / WRITTEN, "a", encoding="utf-8") as fh:
            fh.write("\n" + line)  # the leading newline ends a line a crash may have torn
        self.versions.setdefault(key, set()).add((size, crc))
        self.proven.add(key)

    def write_bytes(self, path, data: bytes) -> None:
        """Write `data` to `path` atomically, if `path` is free or ours (else FileExistsError)."""
        path = Path(path)
        self._check(path)
        self._log(path, len(data), crc32_hex(data))
        write_bytes_atomic(path, data)

    @contextmanager
    def atomic(self, path):
        """A `Staged` file to write in pieces, if `path` is free or ours (else FileExistsError);
        logged once complete, before it is renamed into place."""
        path = Path(path)
        self._check(path)
        with atomic_path(path) as tmp:
            staged = Staged(tmp)
            yield staged
            if staged.crc is None:  # written by a library (a video): read back once
                staged.size, staged.crc = tmp.stat().st_size, file_crc32(tmp)
            self._log(path, staged.size, staged.crc)


@contextmanager
def output_folder(folder, what: str):
    """Hold output `folder`'s lock (base/locks.py, `what` names the command) for the block,
    creating the folder first. A lock file made here is removed at the end; if the block fails,
    the folders created here are removed too while they hold nothing but the project's
    bookkeeping: a failed run leaves no trace."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    lock = folder / LOCK_NAME
    fresh_lock = not lock.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, what):
        held = file_identity(lock)  # None where the folder could not take a lock file
        try:
            yield folder
        except BaseException:
            if created:
                _remove_unused(created)
            raise
        finally:
            # Only while the path still names the file we hold: a swapped-in folder has its own.
            if fresh_lock and held is not None and file_identity(lock) == held:
                lock.unlink()


def _remove_unused(created: list) -> None:
    if any(p.name not in BOOKKEEPING for p in created[0].iterdir()):
        return
    for name in BOOKKEEPING:  # the lock last, by its holder (base/locks.py)
        (created[0] / name).unlink(missing_ok=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def check_replaceable_dir(out_dir, kind: str, what: str = "write") -> None:
    """UserError before any work (creating nothing) if the output folder `out_dir` may not be
    replaced whole (`why_not_replaceable`) or its parent cannot be written: `cannot {what} here`."""
    from base.atomic import check_can_create_dir
    from base.errors import UserError

    out = Path(out_dir)
    reason = why_not_replaceable(out, kind)
    if reason is not None:
        raise UserError(f"{reason}; choose another folder", out)
    try:
        check_can_create_dir(out.parent)
    except OSError as err:
        raise UserError(f"cannot {what} here ({err.strerror or err})", out) from None

"""A committed shard's state file (`.state/NAME.json`) and the test that lets a rerun keep the shard.

The state records the shard's samples with their sources' size, mtime and content fingerprint,
the build options, and the shard's and index's sizes and CRC-32s. A shard is kept only if all of
them still hold: so a changed source, a changed option or a shard damaged in place (even without a
size change) rebuilds it.
"""
from __future__ import annotations

import json
from pathlib import Path

from base.atomic import write_bytes_atomic
from base.checksums import file_crc32, fingerprint
from mindrecords.writer import shard_files
from prep.discover import Sample

SOURCE_KEYS = ("image", "label")


def write_json(path: Path, obj, indent=None) -> None:
    # indent=None keeps json on its C encoder: state files are written per shard, on the hot path.
    write_bytes_atomic(path, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode())


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sources_match(root: Path, members: list[Sample], entries: list) -> bool:
    """True if `entries` (a state's samples) describe exactly these samples' current sources.

    Size and mtime equal: unchanged. Size equal but mtime moved (copied, touched): compare the
    content hash, so only a real change rebuilds. Updates the entries' mtimes when content matched.
    """
    if [(m.id, m.image, m.label) for m in members] != [(e["id"], e["image"], e["label"]) for e in entries]:
        return False
    for entry in entries:
        for key in SOURCE_KEYS:
            path = root / entry[key]
            try:
                st = path.stat()
            except OSError:
                return False
            if st.st_size != entry[f"{key}_bytes"]:
                return False
            if st.st_mtime_ns != entry[f"{key}_mtime_ns"]:
                if fingerprint(path.read_bytes()) != entry[f"{key}_fingerprint"]:
                    return False
                entry[f"{key}_mtime_ns"] = st.st_mtime_ns
    return True


def _files_match(folder: Path, name: str, state: dict) -> bool:
    """The shard and its index have the size and CRC-32 recorded when they were written."""
    files = shard_files(folder, name)
    try:
        if [p.stat().st_size for p in files] != state["file_bytes"]:
            return False
        return [file_crc32(p) for p in files] == state.get("file_crc32")
    except OSError:
        return False


def usable(state, folder: Path, name: str, root: Path, members, options: dict) -> bool:
    return (state is not None and state.get("options") == options and state.get("name") == name
            and _files_match(folder, name, state) and _sources_match(root, members, state["samples"]))

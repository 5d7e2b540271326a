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
# A sample's entry in a state, as `build.build_shard` writes it: key -> type.
_ENTRY_TYPES = {"id": str, "city": str, "image": str, "label": str, "height": int, "width": int, "pixels": list,
                "image_crc32": str, "label_crc32": str,
                **{f"{key}_{what}": kind for key in SOURCE_KEYS
                   for what, kind in (("bytes", int), ("mtime_ns", int), ("fingerprint", str))}}


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


def well_formed(state, name: str, pixels: int | None = None) -> bool:
    """True if `state` has the shape `build.build_shard` writes for shard `name`, each sample with
    `pixels` counts (classes and ignore; any number if None); a damaged state (wrong types, a list,
    a string) is never trusted: its shard is rebuilt."""
    if not (isinstance(state, dict) and state.get("name") == name and isinstance(state.get("options"), dict)):
        return False
    sizes, crcs, samples = state.get("file_bytes"), state.get("file_crc32"), state.get("samples")
    if not (isinstance(sizes, list) and isinstance(crcs, list) and len(sizes) == len(crcs) == 2
            and all(isinstance(v, int) for v in sizes) and all(isinstance(v, str) for v in crcs)):
        return False
    return isinstance(samples, list) and all(
        isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in _ENTRY_TYPES.items())
        and len(e["pixels"]) == (pixels or len(e["pixels"])) and all(isinstance(v, int) for v in e["pixels"])
        for e in samples)


def _file_matches(path: Path, size: int, crc: str) -> bool:
    try:
        return path.stat().st_size == size and file_crc32(path) == crc
    except OSError:
        return False


def _files_match(folder: Path, name: str, state: dict) -> bool:
    """The shard and its index have the size and CRC-32 recorded when they were written."""
    facts = zip(shard_files(folder, name), state["file_bytes"], state["file_crc32"])
    return all(_file_matches(path, size, crc) for path, size, crc in facts)


def written_as_recorded(folder: Path, name: str, state) -> bool:
    """The proof that the build may delete shard `name`'s files: its state is well formed and each
    file still present is byte for byte what the build wrote (size and CRC-32)."""
    return well_formed(state, name) and all(
        not path.exists() or _file_matches(path, size, crc)
        for path, size, crc in zip(shard_files(folder, name), state["file_bytes"], state["file_crc32"]))


def usable(state, folder: Path, name: str, root: Path, members, options: dict, pixels: int) -> bool:
    return (well_formed(state, name, pixels) and state["options"] == options
            and _files_match(folder, name, state) and _sources_match(root, members, state["samples"]))

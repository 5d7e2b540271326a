"""A built split's summary (summary.json: counts, sizes, class frequencies, the build key) and
its printed form."""
from __future__ import annotations

import json

from base.checksums import fingerprint
from base.labels import CLASS_NAMES
from mindrecords.schema import PIXEL_COLUMNS


def _build_key(states: list[dict]) -> str:
    """Identity of a committed split: what the manifest was written from (mtimes excluded)."""
    slim = [{**s, "samples": [{k: v for k, v in e.items() if not k.endswith("_mtime_ns")} for e in s["samples"]]}
            for s in states]
    return fingerprint(json.dumps(slim, sort_keys=True).encode())


def split_summary(split: str, states: list[dict], options: dict) -> dict:
    totals = [0] * len(PIXEL_COLUMNS)
    for s in states:
        for e in s["samples"]:
            totals = [a + b for a, b in zip(totals, e["pixels"])]
    labeled = sum(totals[:-1])
    all_pixels = sum(totals)
    return {
        "split": split, "samples": sum(len(s["samples"]) for s in states), "options": options,
        "shards": [{"name": s["name"], "samples": len(s["samples"]), "bytes": sum(s["file_bytes"])} for s in states],
        "bytes": sum(sum(s["file_bytes"]) for s in states),
        "class_pixels": dict(zip(CLASS_NAMES, totals[:-1])),
        "class_frequency": {n: (c / labeled if labeled else 0.0) for n, c in zip(CLASS_NAMES, totals[:-1])},
        "ignore_pixels": totals[-1], "ignore_fraction": totals[-1] / all_pixels if all_pixels else 0.0,
        "build_key": _build_key(states),
    }


def format_summary(summary: dict) -> str:
    freq = summary["class_frequency"]
    lines = [f"{summary['split']}: {summary['samples']} samples in {len(summary['shards'])} shards, "
             f"{summary['bytes'] / 1e6:.1f} MB, ignore {summary['ignore_fraction']:.1%} of pixels; "
             "class frequencies (of labeled pixels):"]
    items = [f"{name:>13} {freq[name]:6.2%}" for name in CLASS_NAMES]
    for i in range(0, len(items), 4):
        lines.append("  " + "  ".join(items[i:i + 4]))
    return "\n".join(lines)

"""Peak memory of a CLI command in a process of its own.

A forked child inherits its parent's peak RSS (Linux copies the memory map's high-water mark at
fork and keeps it across exec), so `ru_maxrss` of a command started straight from pytest reports
at least pytest's own peak. A tiny launcher process, itself small, starts the command and reports
the command's own peak.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
             "open(sys.argv[1], 'w').write(str(u.ru_maxrss)); sys.exit(os.waitstatus_to_exitcode(s))")


def cli_peak(*args, timeout: float = 300) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in KiB) of `python cli.py ARGS`."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        done = subprocess.run([sys.executable, "-c", _LAUNCHER, peak.name, sys.executable, str(ROOT / "cli.py"),
                               *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr, int(peak.read())

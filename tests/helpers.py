"""Test helpers shared by several test modules (no fixtures: plain functions)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

HEAVY_MODULES = ("torch", "transformers", "pynvml")


def assert_fast_and_light(argv: Sequence[str], check: Callable[[dict[str, Any]], None], *,
                          cpu_seconds_limit: float = 0.5, runs: int = 3) -> None:
    """Run `kvadvise ARGV` (with --json in argv) in a fresh interpreter: it answers in less than
    `cpu_seconds_limit` and never imports torch, transformers or pynvml.

    Timed as the child's CPU time (user + sys, best of `runs`), which scheduling on the suite's two busy
    cores does not inflate (wall time is reported on failure only); importing torch alone costs more than
    1 s of CPU here. `check(document)` asserts the answer of every run.
    """
    code = ("import sys\n"
            f"sys.argv = {['kvadvise', *argv]!r}\n"
            "from kvadvise.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
            "sys.stderr.write('HEAVY=' + ','.join(heavy))\n")
    cpu_seconds, wall_seconds = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        wall_seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        assert "HEAVY=" in done.stderr, done.stderr
        check(json.loads(done.stdout))
        assert done.stderr.rsplit("HEAVY=", 1)[1].strip() == "", done.stderr
    assert min(cpu_seconds) < cpu_seconds_limit, (cpu_seconds, wall_seconds)

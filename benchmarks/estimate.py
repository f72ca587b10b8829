"""Time and peak RSS of `kvadvise estimate` on real configs (targets from issue 4; printed, not asserted).

Each case runs in a fresh process (`python -m kvadvise estimate ... --json`), so the figures include
importing torch and transformers, as a user sees them. Peak RSS is the child's ru_maxrss.

    .venv/bin/python benchmarks/estimate.py

Targets: DeepSeek-V3 (671B) TP-8 shard < 10 s wall and < 2 GiB peak RSS; Llama-3.1-8B < 5 s; the time
barely grows with the parameter count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIRS = (ROOT / "tests" / "data" / "configs", ROOT.parent / "shared" / "model-configs")

CASES = [
    # (label, config, extra args, target seconds, target peak RSS GiB)
    ("Llama-3.2-1B on an L4", "meta-llama__Llama-3.2-1B.json", ["--gpu", "l4"], None, None),
    ("Llama-3.1-8B on an H100", "meta-llama__Llama-3.1-8B.json", ["--gpu", "h100"], 5.0, None),
    ("Llama-3.1-70B TP 4 on H100s", "meta-llama__Llama-3.1-70B.json", ["--gpu", "h100", "-tp", "4"], None, None),
    ("Qwen3-235B-A22B TP 4 on H100s", "Qwen__Qwen3-235B-A22B.json", ["--gpu", "h100", "-tp", "4"], None, None),
    ("DeepSeek-V3 TP 8 on H200s", "deepseek-ai__DeepSeek-V3.json", ["--gpu", "h200", "-tp", "8"], 10.0, 2.0),
]


# The child runs the CLI in-process and reports its own peak RSS on its last stderr line.
_CHILD = """
import resource, sys
from kvadvise.cli import main
sys.argv = ["kvadvise"] + sys.argv[1:]
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nPEAK_RSS_KIB=%d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(config: Path, args: list[str]) -> tuple[float, float, dict]:
    command = [sys.executable, "-c", _CHILD, "estimate", str(config), *args, "--json"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
    seconds = time.monotonic() - started
    peak_kib = int(done.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()[0]) if "PEAK_RSS_KIB=" in done.stderr else 0
    document = json.loads(done.stdout) if done.stdout.strip() else {}
    if not document:
        print(done.stderr, file=sys.stderr)
    return seconds, peak_kib / (1 << 20), document


def main() -> None:
    print(f"{'case':34} {'wall s':>7} {'target':>7} {'RSS GiB':>8} {'target':>7}  weights / activation GiB")
    for label, name, args, target_seconds, target_rss in CASES:
        config = next((d / name for d in CONFIG_DIRS if (d / name).exists()), None)
        if config is None:
            print(f"{label:34} (config {name} not found)")
            continue
        seconds, rss_gib, document = run(config, args)
        memory = document.get("memory") or {}
        weights = memory.get("weights_bytes")
        activation = memory.get("activation_peak_bytes")
        terms = (f"{weights / (1 << 30):.2f} / {activation / (1 << 30):.2f}" if weights is not None
                 and activation is not None else "-")
        ts = f"{target_seconds:.0f}" if target_seconds else "-"
        tr = f"{target_rss:.0f}" if target_rss else "-"
        print(f"{label:34} {seconds:7.2f} {ts:>7} {rss_gib:8.2f} {tr:>7}  {terms}")


if __name__ == "__main__":
    main()

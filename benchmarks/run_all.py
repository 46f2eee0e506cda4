"""``make bench``: every benchmark of the project, in order, each writing benchmarks/results/.

Each script can also be run alone (``python -m benchmarks.<name> --help``). Pass ``--quick``
to shorten the ones that support it. Full runs take well over an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

# (module, arguments for --quick, arguments for a full run)
SCRIPTS = [
    ("bench_lossless", ["--quick"], []),
    ("bench_prune", [], ["--full", "--real", "orientation,ocr,detector"]),
    ("bench_refit", [], []),
    ("bench_calibration", [], []),
    ("bench_lowrank", ["--quick"], []),
    ("bench_quantize", [], ["--full"]),
    ("bench_quantize", [], ["--real"]),
    ("bench_variants", [], []),
    ("suite", ["--quick"], []),
    ("corpus", ["--sample", "40"], []),
    ("hf_archs", ["--only", "bert,t5-encoder,llama (GQA),whisper-encoder", "--no-optimize"], []),
    ("memory", [], []),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short variant of every script")
    parser.add_argument("--only", nargs="*", help="script names to run")
    args = parser.parse_args()
    failed = []
    for name, quick_args, full_args in SCRIPTS:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (quick_args if args.quick else full_args)
        print(f"\n### {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"### {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

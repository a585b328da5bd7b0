"""Does judging parts keep memory per part? One BatchInspection, in this process, judges unique
camera frames (bench/station_soak.py's) in steps, its run kept open as a watch keeps it; after
each step the process's resident memory (and, with --trace, what Python itself holds, with the
lines that grew most) is read. The soak measures the whole station with its watch; this isolates
the judging path: decode, model, image store, database writes.

    python bench/station_memory.py --parts 12000 --out bench/results/station_memory_cpu.json

Its own data folder under bench/.work/station_memory/ (removed first), the shipped demo model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "station_memory"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, default=12000)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--trace", action="store_true", help="also trace Python's allocations")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/station_memory_cpu.json")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    os.environ["DEFECTS_DATA_DIR"] = str(WORK / "data")
    sys.path.insert(0, str(ROOT))
    import inspection  # noqa: F401 - prepares torch and ultralytics first
    from bench.common import commit_of, hardware
    from bench.station_soak import frame_png
    from inspection.batch import BatchInspection, SourceItem
    from inspection.settings import get_settings

    cli = [sys.executable, "-c", "from training.cli import main; main()"]
    subprocess.run([*cli, "models", "install-demo"], check=True, cwd=ROOT, capture_output=True)
    settings = get_settings()
    job = BatchInspection(settings.resolved_database_url, settings.images_dir, "Memory", "S1")
    if args.trace:
        tracemalloc.start(8)
    samples, first_snapshot, started = [], None, time.perf_counter()
    for start in range(0, args.parts, args.step):
        frames = range(start, start + args.step)
        job.run((SourceItem(f"frame-{i}.png", frame_png(i, "part")) for i in frames), finish=False)
        gc.collect()
        sample = {"parts": start + args.step, "rss_mb": round(rss_mb(), 1)}
        if args.trace:
            sample["python_mb"] = round(tracemalloc.get_traced_memory()[0] / 1e6, 2)
            if first_snapshot is None and start >= 2 * args.step:
                first_snapshot = tracemalloc.take_snapshot()
        samples.append(sample)
        print(json.dumps(sample), flush=True)
    grew = []
    if args.trace and first_snapshot is not None:
        for stat in tracemalloc.take_snapshot().compare_to(first_snapshot, "traceback")[:5]:
            grew.append({"kb": round(stat.size_diff / 1024, 1), "where": stat.traceback.format()})
    warm = [s for s in samples if s["parts"] > 2 * args.step]  # (the first steps load and warm)
    slope = (warm[-1]["rss_mb"] - warm[0]["rss_mb"]) / (warm[-1]["parts"] - warm[0]["parts"])
    result = {
        "what": __doc__.split("\n\n")[0],
        "hardware": hardware(),
        "commit": commit_of(ROOT),
        "parts": args.parts,
        "seconds": round(time.perf_counter() - started, 1),
        "inspected": job.summary.inspected,
        "rss_mb_per_1000_parts_after_warm_up": round(slope * 1000, 3),
        "samples": samples,
        "python_growth_top": grew,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: {result['rss_mb_per_1000_parts_after_warm_up']} MB per 1000 parts")


if __name__ == "__main__":
    main()

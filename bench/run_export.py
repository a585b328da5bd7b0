"""`defects batch ... --export csv` on a long run: the time and memory of writing its CSV,
this checkout against another one (an earlier commit, `git worktree add`), alternating, each in
a fresh process on the same database.

    git worktree add /tmp/before <commit>
    python bench/run_export.py --before /tmp/before --parts 200000

The database holds PARTS parts judged by two runs on two stations, interleaved (as two stations
writing at once do); the export is of the first run. Writes bench/results/run_export_cpu.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from common import commit_of, measure_in_trees, write_timings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from history_scale import build  # noqa: E402

from db.migrate import upgrade  # noqa: E402

EXPORT = """
import json, resource, sys, time
from pathlib import Path
from inspection.batch import export_run_csv
began = time.perf_counter()
rows = export_run_csv(sys.argv[1], 1, Path(sys.argv[2]))
print(json.dumps({"rows": rows, "s": time.perf_counter() - began,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--parts", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "run_export_cpu.json"
    )
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as work:
        url = f"sqlite:///{work}/history.db"
        upgrade(url)
        build(url, args.parts, days=7, stations=2, now=datetime(2026, 11, 1))
        csv_of = {name: Path(work) / f"{name}.csv" for name in trees}
        measured = measure_in_trees(
            trees,
            EXPORT,
            lambda name: [url, str(csv_of[name])],
            args.repeats,
            {"DEFECTS_DATA_DIR": work},
        )
        seconds = {name: [round(m["s"], 3) for m in runs] for name, runs in measured.items()}
        peak_mb = {name: [round(m["peak_mb"], 1) for m in runs] for name, runs in measured.items()}
        rows = measured["after"][-1]["rows"]
        same = csv_of["before"].read_bytes() == csv_of["after"].read_bytes()
    write_timings(
        args.out,
        "seconds to write one run's CSV (export_run_csv), each in a fresh process, alternating;"
        " peak_mb: the process's peak resident memory",
        seconds,
        peak_mb=peak_mb,
        rows=rows,
        parts_in_database=args.parts,
        same_csv=same,
        commits={name: commit_of(tree) for name, tree in trees.items()},
    )


if __name__ == "__main__":
    main()

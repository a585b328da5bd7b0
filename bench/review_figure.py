"""The Review page's figure of a camera-sized part: the seconds to build it and turn it into
the JSON sent to the browser, and that JSON's size, this checkout against another one (an
earlier commit, `git worktree add`), alternating, each in a fresh process.

    git worktree add /tmp/before <commit>
    python bench/review_figure.py --before /tmp/before --side 3000

Writes bench/results/review_figure_cpu.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import commit_of, measure_in_trees, write_timings

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import json, resource, sys, time
import numpy as np
from dashboard.charts import ShownBox, review_figure
side = int(sys.argv[1])
pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
began = time.perf_counter()
sent = review_figure(pixels, [ShownBox("1: scratch 0.80", 10, 10, 200, 120, True)]).to_json()
print(json.dumps({"s": time.perf_counter() - began, "json_mb": len(sent) / 1e6,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--side", type=int, default=3000, help="pixels of the square part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "review_figure_cpu.json"
    )
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}
    measured = measure_in_trees(trees, BUILD, lambda _: [str(args.side)], args.repeats)
    seconds = {name: [round(m["s"], 3) for m in runs] for name, runs in measured.items()}
    json_mb = {name: round(runs[-1]["json_mb"], 2) for name, runs in measured.items()}
    peak_mb = {name: [round(m["peak_mb"], 1) for m in runs] for name, runs in measured.items()}
    write_timings(
        args.out,
        f"seconds to build the Review figure of a {args.side}x{args.side} RGB part and turn it "
        "into JSON, each in a fresh process, alternating; json_mb: what the browser is sent; "
        "peak_mb: the process's peak resident memory",
        seconds,
        json_mb=json_mb,
        peak_mb=peak_mb,
        commits={name: commit_of(tree) for name, tree in trees.items()},
    )


if __name__ == "__main__":
    main()

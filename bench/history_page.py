"""The History page over a long history, as the browser gets it: seconds to render it (its
default last 30 days) and the size of each chart sent, this checkout against another one (an
earlier commit, `git worktree add`), alternating, each in a fresh process.

    git worktree add /tmp/before <commit>
    python bench/history_page.py --before /tmp/before --parts 500000 --days 30

The history is history_scale.py's synthetic one (PARTS parts over DAYS days, four stations),
built once in bench/.work/history_page/. Writes bench/results/history_page_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
from datetime import datetime
from pathlib import Path

from common import commit_of, measure_in_trees, write_timings

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "history_page"

RENDER = """
import json, sys, time
from pathlib import Path
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(str(Path.cwd() / "dashboard" / "app.py"), default_timeout=600).run()
began = time.perf_counter()
at.switch_page("views/history.py").run()
first = time.perf_counter() - began
began = time.perf_counter()
at.run()  # (any widget changed reruns the page)
again = time.perf_counter() - began
assert not at.exception, at.exception
charts = {}
for chart in at.get("plotly_chart"):
    spec = json.loads(chart.proto.spec)
    title = spec["layout"].get("title", {}).get("text", "untitled")
    charts[title] = round(len(chart.proto.spec) / 1e6, 3)
print(json.dumps({"first_s": first, "rerun_s": again, "chart_mb": charts}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--parts", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "history_page_cpu.json"
    )
    args = parser.parse_args()
    data = WORK / f"data-{args.parts}-{args.days}"
    os.environ["DEFECTS_DATA_DIR"] = str(data)  # (before the product's settings are read)
    if not (data / "built").exists():
        shutil.rmtree(data, ignore_errors=True)
        from history_scale import build

        from db.migrate import upgrade
        from inspection.settings import get_settings

        url = get_settings().resolved_database_url
        upgrade(url)
        build(url, args.parts, args.days, 4, datetime.now().replace(microsecond=0))
        (data / "built").touch()
    trees = {"before": args.before.resolve(), "after": ROOT}
    measured = measure_in_trees(trees, RENDER, lambda _: [], args.repeats)
    write_timings(
        args.out,
        f"seconds to render the History page (last 30 days) over a synthetic history of "
        f"{args.parts} parts in {args.days} days, each in a fresh process, alternating; "
        "rerun_s: the page run again (a filter changed); chart_mb: each chart's JSON sent to "
        "the browser",
        {name: [round(m["first_s"], 2) for m in runs] for name, runs in measured.items()},
        rerun_s={name: [round(m["rerun_s"], 2) for m in runs] for name, runs in measured.items()},
        chart_mb={name: runs[-1]["chart_mb"] for name, runs in measured.items()},
        commits={name: commit_of(tree) for name, tree in trees.items()},
    )


if __name__ == "__main__":
    main()

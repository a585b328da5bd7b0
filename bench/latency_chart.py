"""The History page's latency chart over a long history: its bins and percentiles counted in
the database (`db.queries.latency_histogram`) against every part's latency read into the page
and binned there (how the page did it before), alternating in one process.

    python bench/latency_chart.py --parts 500000 --days 30
    python bench/latency_chart.py --url postgresql+psycopg://... (an empty database)

The history is history_scale.py's synthetic one, built once (SQLite: in
bench/.work/history_page/, shared with history_page.py). Writes
bench/results/latency_chart_<sqlite|postgresql>.json: seconds per chart's data, and the peak
memory Python allocated for it (tracemalloc), for the last DAYS days (the page's default range
is 30) and the whole history.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "history_page"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--url", help="an empty database to build the history in (PostgreSQL)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = WORK / f"data-{args.parts}-{args.days}"
    os.environ["DEFECTS_DATA_DIR"] = str(data)  # (before the product's settings are read)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import numpy as np
    from common import commit_of, write_timings
    from history_scale import build
    from sqlalchemy import select

    from db.migrate import upgrade
    from db.models import Inspection, Part, Verdict
    from db.queries import Filters, latency_histogram, percentile
    from db.session import get_engine, session_scope
    from inspection.settings import get_settings

    url = args.url or get_settings().resolved_database_url
    marker = data / ("built" if args.url is None else "built-elsewhere")
    if args.url is not None or not marker.exists():
        upgrade(url)
        build(url, args.parts, args.days, 4, datetime.now().replace(microsecond=0))
        if args.url is None:
            marker.touch()

    def read_and_bin(filters: Filters) -> None:
        """The page before: every latency read, binned and ranked here."""
        with session_scope(url) as session:
            values = [
                float(v)
                for v in session.scalars(
                    select(Inspection.latency_ms)
                    .join(Part, Part.id == Inspection.part_id)
                    .where(
                        Inspection.latency_ms.is_not(None),
                        Inspection.verdict != Verdict.ERROR,
                        *filters.conditions(),
                        *filters.class_conditions(),
                    )
                    .order_by(Inspection.latency_ms)
                )
            ]
        np.histogram(np.asarray(values), bins=50)
        for q in (50, 99):
            percentile(values, q)

    def in_the_database(filters: Filters) -> None:
        with session_scope(url) as session:
            latency_histogram(session, filters)

    ways: dict[str, Callable[[Filters], None]] = {
        "before": read_and_bin,
        "after": in_the_database,
    }
    ranges = {
        f"last {args.days} days": Filters(start=datetime.now() - timedelta(days=args.days)),
        "whole history": Filters(),
    }
    seconds: dict[str, dict[str, list[float]]] = {r: {w: [] for w in ways} for r in ranges}
    peak_mb: dict[str, dict[str, float]] = {r: {} for r in ranges}
    for name, filters in ranges.items():
        for _ in range(args.repeats):
            for way, run in ways.items():
                began = time.perf_counter()
                run(filters)
                seconds[name][way].append(round(time.perf_counter() - began, 3))
        for way, run in ways.items():
            tracemalloc.start()
            run(filters)
            peak_mb[name][way] = round(tracemalloc.get_traced_memory()[1] / 1e6, 1)
            tracemalloc.stop()
    dialect = get_engine(url).dialect.name
    out = args.out or ROOT / "bench" / "results" / f"latency_chart_{dialect}.json"
    first = next(iter(ranges))
    write_timings(
        out,
        f"seconds to get the History page's latency chart data over a synthetic history of "
        f"{args.parts} parts in {args.days} days on {dialect}, alternating in one process; "
        "timings: the first range; seconds and peak_mb: each range (peak_mb: what Python "
        "allocated, tracemalloc)",
        seconds[first],
        seconds=seconds,
        medians_by_range={
            r: {w: statistics.median(v) for w, v in by_way.items()} for r, by_way in seconds.items()
        },
        peak_mb=peak_mb,
        code=commit_of(ROOT),
    )
    print(out.read_text())


if __name__ == "__main__":
    main()

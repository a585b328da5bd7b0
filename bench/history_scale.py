"""The dashboard's history and Live queries on a long history: do they stay fast?

Builds a synthetic history (PARTS parts and their current verdicts spread over DAYS days on
STATIONS stations of two lines, a tenth failed with one counted prediction each, a twentieth
reviewed, the last
quarter-hour quiet so that the Live page looks each station's last verdict up), then times each
query the pages run, REPEATS times (median):

    python bench/history_scale.py --parts 1000000 --days 365
    python bench/history_scale.py --url postgresql+psycopg://... (an empty database)
    python bench/history_scale.py --url URL --reuse (a database an earlier run built)

`--reuse` times a history this bench built before (the same sizes) without building it again,
so that one history is timed under two settings (PostgreSQL's JIT on and off: the URL's
`?options=-c%20jit%3Doff`). Writes bench/results/history_scale_<sqlite|postgresql>
[_analyzed][LABEL].json, with the median and the least of each query.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402

from db.migrate import upgrade  # noqa: E402
from db.models import (  # noqa: E402
    Inspection,
    InspectionRun,
    ModelKind,
    ModelVersion,
    Part,
    Prediction,
    PredictionSource,
    Review,
    ReviewKind,
    Verdict,
)
from db.queries import (  # noqa: E402
    Filters,
    daily_volume,
    defect_pareto,
    inspection_count,
    inspection_rows,
    latency_summary,
    minute_volume,
    rates,
    station_activity,
)
from db.registry import ensure_station  # noqa: E402
from db.session import connection_scope, get_engine, session_scope  # noqa: E402

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
ROWS_PER_INSERT = 20000


def build(url: str, parts: int, days: int, stations: int, now: datetime) -> None:
    """The synthetic history, written in large INSERTs (a station writes the same rows)."""
    random.seed(0)
    with session_scope(url) as session:
        ids = [
            (s.line_id, s.id)
            for s in (
                ensure_station(session, f"Line {i % 2 + 1}", f"Cam {i}") for i in range(stations)
            )
        ]
        version = ModelVersion(
            name="history",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            file_path="history.pt",
            sha256="0" * 64,
            classes=CLASSES,
        )
        session.add(version)
        session.flush()
        runs = []
        for line_id, station_id in ids:
            run = InspectionRun(
                line_id=line_id,
                station_id=station_id,
                model_version_id=version.id,
                source="history",
                started_at=now - timedelta(days=days),
                finished_at=now - timedelta(minutes=20),
            )
            session.add(run)
            runs.append(run)
        session.flush()
        run_ids, version_id = [r.id for r in runs], version.id
    span_s = days * 86400 - 20 * 60  # nothing in the last 20 minutes
    start = now - timedelta(days=days)
    for first in range(0, parts, ROWS_PER_INSERT):
        count = min(ROWS_PER_INSERT, parts - first)
        part_rows, inspection_rows, prediction_rows, review_rows = [], [], [], []
        for k in range(count):
            i = first + k
            which = i % stations
            line_id, station_id = ids[which]
            at = start + timedelta(seconds=span_s * i / parts)
            part_rows.append(
                {
                    "id": i + 1,
                    "content_hash": f"{i:064x}",
                    "stored_path": "",
                    "size_bytes": 1,
                    "captured_at": at,
                    "line_id": line_id,
                    "station_id": station_id,
                    "created_at": at,
                    "first_model_version_id": version_id,
                }
            )
            failed = random.random() < 0.1
            inspection_rows.append(
                {
                    "id": i + 1,
                    "part_id": i + 1,
                    "run_id": run_ids[which],
                    "model_version_id": version_id,
                    "verdict": Verdict.FAIL if failed else Verdict.PASS,
                    "thresholds": {},
                    "latency_ms": random.uniform(5, 30),
                    "inspected_at": at,
                }
            )
            if random.random() < 0.05:  # a twentieth reviewed: the rates' denominators
                truly_defective = failed != (random.random() < 0.05)  # a few wrong verdicts
                if truly_defective:
                    kind = ReviewKind.CONFIRMED_DEFECT if failed else ReviewKind.MISSED_DEFECT
                else:
                    kind = ReviewKind.FALSE_CALL if failed else ReviewKind.GOOD_PART
                review_rows.append(
                    {
                        "part_id": i + 1,
                        # (A failed part's detection is reviewed as itself, as the Review
                        # page does: the truth of a part needs each detection decided.)
                        "prediction_id": i + 1 if failed else None,
                        "kind": kind,
                        "class_name": random.choice(CLASSES) if truly_defective else None,
                        "reviewer": "qa",
                        "created_at": at,
                    }
                )
            if failed:
                prediction_rows.append(
                    {
                        "id": i + 1,  # (the review above names it)
                        "inspection_id": i + 1,
                        "source": PredictionSource.DETECTOR,
                        "class_name": random.choice(CLASSES),
                        "confidence": 0.8,
                        "x1": 1.0,
                        "y1": 1.0,
                        "x2": 9.0,
                        "y2": 9.0,
                        "counted": True,
                    }
                )
        with connection_scope(url) as connection:
            connection.execute(insert(Part), part_rows)
            connection.execute(insert(Inspection), inspection_rows)
            connection.execute(insert(Prediction), prediction_rows)
            if review_rows:
                connection.execute(insert(Review), review_rows)


def built_at(url: str, parts: int) -> datetime:
    """The `now` an earlier run built the history at at `url` (its runs finished 20 minutes
    before it), so that a run with --reuse asks for the same days; exits when the history there
    is not this bench's of `parts` parts."""
    with session_scope(url) as session:
        found = session.scalar(select(func.count()).select_from(Part))
        finished = session.scalar(
            select(func.max(InspectionRun.finished_at)).where(InspectionRun.source == "history")
        )
    if found != parts or finished is None:
        sys.exit(f"error: {url} holds {found} parts of this bench's history, not --parts {parts}")
    return finished + timedelta(minutes=20)


def server_settings(url: str) -> dict[str, str] | None:
    """The server settings a timing depends on, for the result file: PostgreSQL's JIT, which
    compiles a query whose estimated cost is high (None for SQLite)."""
    if get_engine(url).dialect.name != "postgresql":
        return None
    with connection_scope(url) as connection:
        names = ("jit", "jit_above_cost", "jit_inline_above_cost", "jit_optimize_above_cost")
        return {name: connection.exec_driver_sql(f"SHOW {name}").scalar_one() for name in names}


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and least milliseconds (the least: the call with the fewest interruptions by
    other work on a shared machine)."""
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return round(statistics.median(seconds) * 1000, 1), round(min(seconds) * 1000, 1)


def history_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a bench timing queries on this synthetic history (this one's, and
    review_queue.py's): where the history is, its size, how often each query is timed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--reuse", action="store_true", help="time the history at --url as is")
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--stations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="gather the planner's statistics after building (a SQLite file never has them "
        "unless asked; PostgreSQL's autovacuum gathers them soon after)",
    )
    parser.add_argument("--label", default="", help="appended to the result file's name")
    parser.add_argument("--out", type=Path)
    return parser


def main() -> None:
    parser = history_arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.reuse and not args.url:
        parser.error("--reuse needs --url")
    scratch = tempfile.TemporaryDirectory()
    url = args.url or f"sqlite:///{Path(scratch.name) / 'history.db'}"
    build_s = None
    if args.reuse:
        now = built_at(url, args.parts)
    else:
        upgrade(url)
        now = datetime.now().replace(microsecond=0)  # (stored naive, as utcnow() stores)
        began = time.perf_counter()
        build(url, args.parts, args.days, args.stations, now)
        build_s = round(time.perf_counter() - began, 1)
    if args.analyze:  # fresh statistics, as a maintained database has
        with connection_scope(url) as connection:
            connection.exec_driver_sql("ANALYZE")
    last_week = Filters(start=now - timedelta(days=7))
    station_one = Filters(start=now - timedelta(days=30), station_id=1)

    def query(run: Callable[..., object], *arguments: object) -> Callable[[], object]:
        def call() -> object:
            with session_scope(url) as session:
                return run(session, *arguments)

        return call

    queries = {
        "live: station_activity (last 15 min, every station quiet)": query(
            station_activity, now - timedelta(minutes=15)
        ),
        "live: minute_volume (last 60 min)": query(minute_volume, now - timedelta(minutes=60)),
        "history: rates by day, last 7 days": query(rates, last_week, "day"),
        "history: rates by day, whole history": query(rates, Filters(), "day"),
        "history: rates by class, one station, 30 days": query(rates, station_one, "class"),
        "history: defect_pareto, last 7 days": query(defect_pareto, last_week),
        "history: daily_volume, whole history": query(daily_volume, Filters()),
        "history: latency_summary, last 7 days": query(latency_summary, last_week),
        # (The History page counts what its download would leave out at every render.)
        "history: inspection_count (the download's cap), last 30 days": query(
            inspection_count,
            replace(Filters(start=now - timedelta(days=30)), include_superseded=True),
        ),
        "history: inspection_count (the download's cap), whole history": query(
            inspection_count, replace(Filters(), include_superseded=True)
        ),
        # (The CSV download, built when its button is pressed.)
        "history: inspection_rows (the CSV download), last 30 days": query(
            inspection_rows,
            replace(Filters(start=now - timedelta(days=30)), include_superseded=True),
        ),
        "live: inspection_rows, latest 20": query(inspection_rows, Filters(), 20),
    }
    measured = {name: timed(call, args.repeats) for name, call in queries.items()}
    dialect = get_engine(url).dialect.name
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "database": dialect,
        "code": commit,  # (the queries' code: a before-and-after pair names two)
        "hardware": f"CPU, {len(os.sched_getaffinity(0))} cores ({platform.machine()})",
        "parts": args.parts,
        "days": args.days,
        "stations": args.stations,
        "build_s": build_s,  # (None: a history built by an earlier run, --reuse)
        "analyzed": args.analyze,  # (with --reuse: ANALYZE run again before timing)
        "settings": server_settings(url),
        "repeats": args.repeats,
        "what": "median and least milliseconds per query, a session opened for each, as a page "
        "does",
        "median_ms": {name: median for name, (median, _) in measured.items()},
        "least_ms": {name: least for name, (_, least) in measured.items()},
    }
    suffix = "_analyzed" if args.analyze else ""
    name = f"history_scale_{dialect}{suffix}{args.label}.json"
    out = args.out or ROOT / "bench" / "results" / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

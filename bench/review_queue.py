"""The Review page's queries on a long history: does the queue stay fast?

Builds `history_scale.py`'s synthetic history (PARTS parts over DAYS days on STATIONS stations,
a tenth failed, a twentieth reviewed) and adds what the queue looks at beyond it:

- parts partly reviewed: one failed part in 25 given a second detection, its first decided
  (confirmed) and its second not, so it waits in the queue;
- parts judged again by a second model version, both verdicts current (one part in 50);
- parts judged again at a second operating point, the first verdict superseded (one part in
  50, half of the partly reviewed ones among them: offered with the verdict their decisions
  were made on).

Then times each query the Review page runs at every render (`dashboard/views/review.py`),
REPEATS times (median and least), a session opened for each as the page does:

    python bench/review_queue.py --parts 1000000 --days 365
    python bench/review_queue.py --url postgresql+psycopg://... (an empty database)
    python bench/review_queue.py --url URL --reuse (a database an earlier run built)

`--reuse` times a history this bench built before (the same sizes) without building it again:
the same data for two checkouts of the code (`git worktree add DIR COMMIT`, this file run
there with PYTHONPATH=DIR), or one history under two settings (PostgreSQL's JIT on and off:
the URL's `?options=-c%20jit%3Doff`). Writes
bench/results/review_queue_<sqlite|postgresql>[LABEL].json.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import bindparam, func, insert, select, update  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.history_scale import (  # noqa: E402
    CLASSES,
    build,
    history_arguments,
    server_settings,
)
from bench.history_scale import timed as history_timed  # noqa: E402
from db import reviews  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import (  # noqa: E402
    Inspection,
    ModelKind,
    ModelVersion,
    Part,
    Prediction,
    PredictionSource,
    Review,
    ReviewKind,
    Verdict,
)
from db.session import connection_scope, get_engine, session_scope  # noqa: E402
from training.backtest import unused_dataset_name  # noqa: E402

LISTED = 50  # the page's picker (dashboard/views/review.py)
REVIEW_SCAN = 2000  # the page's queue: every part waiting among this many recent verdicts
CHUNK = 20000  # parts a round of extra rows covers


def _prediction(pid: int, inspection_id: int, confidence: float) -> dict[str, object]:
    return {
        "id": pid,
        "inspection_id": inspection_id,
        "source": PredictionSource.DETECTOR,
        "class_name": CLASSES[pid % len(CLASSES)],
        "confidence": confidence,
        "x1": 1.0,
        "y1": 1.0,
        "x2": 9.0,
        "y2": 9.0,
        "counted": confidence >= 0.25,
    }


def add_rejudged_and_partly_reviewed(url: str, parts: int) -> dict[str, int]:
    """The rows the queue's later work looks at, added to `build`'s history; returns counts."""
    random.seed(1)
    with session_scope(url) as session:
        second = ModelVersion(
            name="history-2",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            file_path="history-2.pt",
            sha256="1" * 64,
            classes=CLASSES,
        )
        session.add(second)
        session.flush()
        first_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == "history"))
        second_id = second.id
        next_inspection = (session.scalar(select(func.max(Inspection.id))) or 0) + 1
        next_prediction = (session.scalar(select(func.max(Prediction.id))) or 0) + 1
    counts = {"partly_reviewed": 0, "second_version": 0, "second_operating_point": 0}
    for first in range(1, parts + 1, CHUNK):
        last = min(first + CHUNK, parts + 1)
        with connection_scope(url) as connection:
            rows = connection.execute(
                select(
                    Inspection.id,
                    Inspection.part_id,
                    Inspection.run_id,
                    Inspection.verdict,
                    Inspection.inspected_at,
                    Prediction.id,
                )
                .outerjoin(Prediction, Prediction.inspection_id == Inspection.id)
                .where(Inspection.part_id >= first, Inspection.part_id < last)
            ).all()
            reviewed_predictions = set(
                connection.scalars(
                    select(Review.prediction_id).where(
                        Review.part_id >= first,
                        Review.part_id < last,
                        Review.prediction_id.is_not(None),
                    )
                )
            )
            new_inspections: list[dict[str, object]] = []
            new_predictions: list[dict[str, object]] = []
            new_reviews: list[dict[str, object]] = []
            superseded: list[dict[str, object]] = []
            for inspection_id, part_id, run_id, verdict, at, prediction_id in rows:
                partly = verdict == Verdict.FAIL and part_id % 25 == 7
                if partly:  # a second detection, the first decided, the second not
                    new_predictions.append(_prediction(next_prediction, inspection_id, 0.3))
                    next_prediction += 1
                    if prediction_id not in reviewed_predictions:
                        new_reviews.append(
                            {
                                "part_id": part_id,
                                "prediction_id": prediction_id,
                                "kind": ReviewKind.CONFIRMED_DEFECT,
                                "class_name": CLASSES[part_id % len(CLASSES)],
                                "reviewer": "qa",
                                "created_at": at + timedelta(minutes=2),
                            }
                        )
                    counts["partly_reviewed"] += 1
                again_version = part_id % 50 == 11
                again_point = part_id % 50 == 13 or (partly and part_id % 2 == 1)
                if not (again_version or again_point):
                    continue
                failed = partly or random.random() < 0.1
                new_inspections.append(
                    {
                        "id": next_inspection,
                        "part_id": part_id,
                        "run_id": run_id,
                        "model_version_id": second_id if again_version else first_id,
                        "verdict": Verdict.FAIL if failed else Verdict.PASS,
                        "thresholds": {} if again_version else {"default": 0.3},
                        "latency_ms": random.uniform(5, 30),
                        "inspected_at": at + timedelta(minutes=5),
                    }
                )
                confidences = (0.8, 0.35) if partly else (0.8,) if failed else ()
                for confidence in confidences:
                    new_predictions.append(
                        _prediction(next_prediction, next_inspection, confidence)
                    )
                    next_prediction += 1
                next_inspection += 1
                if again_version:
                    counts["second_version"] += 1
                else:
                    superseded.append({"b_id": inspection_id, "b_at": at + timedelta(minutes=5)})
                    counts["second_operating_point"] += 1
            if superseded:  # (before the new current verdicts: one current per version)
                connection.execute(
                    update(Inspection)
                    .where(Inspection.id == bindparam("b_id"))
                    .values(superseded_at=bindparam("b_at")),
                    superseded,
                )
            if new_inspections:
                connection.execute(insert(Inspection), new_inspections)
            if new_predictions:
                connection.execute(insert(Prediction), new_predictions)
            if new_reviews:
                connection.execute(insert(Review), new_reviews)
    return counts


def page_render(session: Session, last: int | None) -> None:
    """The database work of one render of the Review page, as dashboard/views/review.py does
    it (the production detector's lookup left out: one row)."""
    waiting = reviews.review_queue(session, limit=REVIEW_SCAN, scan=REVIEW_SCAN)
    queue = waiting[:LISTED]
    session.execute(
        select(Part.id, Part.stored_path).where(Part.id.in_([q.part_id for q in queue]))
    )
    if last is not None and all(q.part_id != last for q in queue):
        reviews.part_item(session, last)
    if queue:
        shown_part(session, queue[0].inspection_id)
    reviews.reviewer_classes(session, CLASSES)
    unused_dataset_name(session)


def shown_part(session: Session, inspection_id: int) -> None:
    """The part shown: its verdict, decisions, added defects, latest verdict, decided one."""
    inspection = session.get(Inspection, inspection_id)
    assert inspection is not None
    part = inspection.part
    reviews.decisions(session, inspection_id)
    list(inspection.predictions)
    reviews.missed_defects(session, part.id)
    session.scalars(
        select(Inspection)
        .where(
            Inspection.part_id == part.id,
            Inspection.is_current(),
            Inspection.verdict != Verdict.ERROR,
        )
        .order_by(Inspection.inspected_at.desc(), Inspection.id.desc())
    ).first()
    if hasattr(reviews, "verdicts_reviewed"):  # (not in the code before it)
        reviews.verdicts_reviewed(session, [part.id])


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """`history_scale.timed` after a first call, which warms the caches, as a page in use has
    them."""
    call()
    return history_timed(call, repeats)


def main() -> None:
    parser = history_arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    # (At the start: the code this process imported, whatever is committed while it runs.)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if args.reuse and not args.url:
        parser.error("--reuse needs --url")
    scratch = tempfile.TemporaryDirectory()
    url = args.url or f"sqlite:///{Path(scratch.name) / 'history.db'}"
    build_s, counts = None, None
    if args.reuse:
        with session_scope(url) as session:
            found = session.scalar(select(func.count()).select_from(Part))
        if found != args.parts:
            sys.exit(f"error: {url} holds {found} parts, not --parts {args.parts}")
    else:
        upgrade(url)
        now = datetime.now().replace(microsecond=0)  # (stored naive, as utcnow() stores)
        began = time.perf_counter()
        build(url, args.parts, args.days, args.stations, now)
        counts = add_rejudged_and_partly_reviewed(url, args.parts)
        build_s = round(time.perf_counter() - began, 1)
    if args.analyze:  # fresh statistics, as a maintained database has
        with connection_scope(url) as connection:
            connection.exec_driver_sql("ANALYZE")
    with session_scope(url) as session:
        # The part a reviewer finished last, out of the queue: the latest part whose every
        # detection is decided (part_item shows it, with the verdict decided on).
        last = session.scalar(
            select(Review.part_id)
            .where(Review.prediction_id.is_not(None))
            .order_by(Review.part_id.desc())
            .limit(1)
        )
        # The latest partly reviewed part judged again: shown with an earlier verdict.
        partly_again = session.scalar(
            select(Inspection.part_id)
            .where(Inspection.superseded_at.is_not(None))
            .where(
                Inspection.part_id.in_(
                    select(Review.part_id).where(Review.prediction_id.is_not(None))
                )
            )
            .order_by(Inspection.part_id.desc())
            .limit(1)
        )
        line_id = session.scalar(select(Part.line_id).order_by(Part.id.desc()).limit(1))
        waiting = reviews.review_queue(session, limit=REVIEW_SCAN, scan=REVIEW_SCAN)
        shown = waiting[0].inspection_id if waiting else None

    def query(run: Callable[..., object], *arguments: object, **options: object):  # type: ignore[no-untyped-def]
        def call() -> object:
            with session_scope(url) as session:
                return run(session, *arguments, **options)

        return call

    queries: dict[str, Callable[[], object]] = {
        "review_queue (default: 50 listed among the 2000 latest)": query(reviews.review_queue),
        "review_queue, one line": query(reviews.review_queue, line_id=line_id),
        "review_queue as the page asks (every part waiting among the 2000 latest)": query(
            reviews.review_queue, limit=REVIEW_SCAN, scan=REVIEW_SCAN
        ),
        "part_item (the part finished last)": query(reviews.part_item, last),
        "part_item (a part partly reviewed, judged again since)": query(
            reviews.part_item, partly_again
        ),
        "the part shown (verdict, decisions, added defects, latest verdict)": query(
            shown_part, shown
        ),
        "reviewer_classes": query(reviews.reviewer_classes, CLASSES),
        "unused_dataset_name (the export's name)": query(unused_dataset_name),
        "the page's queries together (one render)": query(page_render, last),
        # (The export of reviews: every reviewed part with its truth and boxes.)
        "reviewed_parts (the export's parts and boxes)": query(reviews.reviewed_parts),
    }
    if hasattr(reviews, "verdicts_reviewed"):
        queries["verdicts_reviewed (the 2000 latest parts)"] = query(
            reviews.verdicts_reviewed,
            [i.part_id for i in waiting],
        )
    measured = {name: timed(call, args.repeats) for name, call in queries.items()}
    dialect = get_engine(url).dialect.name
    result = {
        "database": dialect,
        "code": commit,  # (the queries' code: a before-and-after pair names two)
        "hardware": f"CPU, {len(os.sched_getaffinity(0))} cores ({platform.machine()})",
        "parts": args.parts,
        "days": args.days,
        "stations": args.stations,
        "added": counts,  # (None: a history built by an earlier run, --reuse)
        "build_s": build_s,
        "analyzed": args.analyze,  # (with --reuse: ANALYZE run again before timing)
        "settings": server_settings(url),  # (PostgreSQL's JIT: on or off for this run)
        "repeats": args.repeats,
        "parts_waiting_among_latest": len(waiting),
        "what": "median and least milliseconds per query (after one call to warm caches), a session "
        "opened for each, as a page does",
        "median_ms": {name: median for name, (median, _) in measured.items()},
        "least_ms": {name: least for name, (_, least) in measured.items()},
    }
    out = args.out or ROOT / "bench" / "results" / f"review_queue_{dialect}{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""A nightly `defects prune-images` on a station's long history: does it stay quick?

Builds the synthetic history of `history_scale.py` (PARTS parts over DAYS days, a tenth failed,
a twentieth reviewed), every part with an image recorded in the store. The parts last judged
more than OLDER_THAN + 1 days ago were pruned on earlier nights: their files are gone. The
parts of the one day since (last judged between OLDER_THAN + 1 and OLDER_THAN days ago) have
their files. Then, as dry runs (so every round sees the same store), alternating:

- every old part looked at, as every prune did before it noted its cut-off (`--all`);
- the parts last judged since the last night's cut-off, noted in the store.

    python bench/prune_nightly.py --parts 1000000 --days 365 --older-than 90

Writes bench/results/prune_nightly_<sqlite|postgresql>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, update  # noqa: E402

from bench.history_scale import build  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Part, utcnow  # noqa: E402
from db.session import get_engine, session_scope  # noqa: E402
from inspection.store import LAST_PRUNE_FILE, PruneReport, prune_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--stations", type=int, default=4)
    parser.add_argument("--older-than", type=float, default=90)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    # (At the start: the code this process imported, whatever is committed while it runs.)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    scratch = tempfile.TemporaryDirectory()
    url = args.url or f"sqlite:///{Path(scratch.name) / 'history.db'}"
    store = Path(scratch.name) / "images"
    upgrade(url)
    now = utcnow().replace(microsecond=0)
    began = time.perf_counter()
    build(url, args.parts, args.days, args.stations, now)
    with session_scope(url) as session:  # (the store's layout: a folder by the first bytes)
        name = func.substr(Part.content_hash, 1, 2) + "/" + Part.content_hash + ".png"
        session.execute(update(Part).values(stored_path=str(store) + "/" + name))
        last_night = now - timedelta(days=args.older_than + 1)
        tonight = now - timedelta(days=args.older_than)
        day = session.scalars(
            select(Part.stored_path).where(
                Part.captured_at >= last_night, Part.captured_at < tonight
            )
        ).all()
    old_enough = time.time() - (args.older_than + 1) * 86400  # (not an image in use)
    for path in map(Path, day):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an image")
        os.utime(path, (old_enough, old_enough))
    # (What last night's prune noted, as it writes it.)
    prune_images(url, store, args.older_than + 1)
    assert (store / LAST_PRUNE_FILE).is_file()
    build_s = time.perf_counter() - began

    def prune(look_at_all: bool) -> tuple[float, PruneReport]:
        start = time.perf_counter()
        report = prune_images(url, store, args.older_than, dry_run=True, look_at_all=look_at_all)
        return time.perf_counter() - start, report

    seconds: dict[str, list[float]] = {"every old part": [], "since last night's cut-off": []}
    reports: dict[str, PruneReport] = {}
    for _ in range(args.rounds):
        for case, look_at_all in (("every old part", True), ("since last night's cut-off", False)):
            took, reports[case] = prune(look_at_all)
            seconds[case].append(took)
    whole, window = reports["every old part"], reports["since last night's cut-off"]
    assert (whole.deleted, whole.freed_bytes) == (window.deleted, window.freed_bytes)
    result = {
        "database": get_engine(url).dialect.name,
        "code": commit,
        "hardware": f"CPU, {len(os.sched_getaffinity(0))} cores ({platform.machine()})",
        "parts": args.parts,
        "days": args.days,
        "older_than_days": args.older_than,
        "images_of_the_day_since_last_night": len(day),
        "build_s": round(build_s, 1),
        "rounds": args.rounds,
        "dry_run_s_median": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
        "dry_run_s": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
        "would_delete": {k: r.deleted for k, r in reports.items()},
        "already_gone_looked_at": {k: r.already_gone for k, r in reports.items()},
        "kept_failed_looked_at": {k: r.kept_failed for k, r in reports.items()},
        "kept_reviewed_looked_at": {k: r.kept_reviewed for k, r in reports.items()},
    }
    out = args.out or ROOT / "bench" / "results" / f"prune_nightly_{result['database']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

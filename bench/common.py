"""What the benchmark scripts share. Each script sets DEFECTS_DATA_DIR before importing this, so
that its own working database and datasets are used."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from itertools import permutations
from pathlib import Path
from typing import Any


def hardware() -> str:
    """The machine a figure was measured on, in words, for the result files."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def commit_of(tree: Path) -> str:
    """The commit a checkout is at, "-dirty" when it has changes: what a side-by-side timing
    compared."""
    import subprocess

    return subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()


def measure_in_trees(
    trees: dict[str, Path],
    snippet: str,
    argv_of: Callable[[str], list[str]],
    repeats: int,
    env: dict[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """What a Python snippet measures of itself (a JSON object on its last line of output),
    run in a fresh process in each checkout (`trees`, by name) in turn, `repeats` times,
    alternating: the side-by-side of this checkout against an earlier commit."""
    import subprocess
    import sys

    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            done = subprocess.run(
                [sys.executable, "-c", snippet, *argv_of(name)],
                cwd=tree,
                env={**os.environ, **(env or {}), "PYTHONPATH": str(tree)},
                capture_output=True,
                text=True,
                check=True,
            )
            measured[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return measured


def write_timings(out: Path, what: str, timings: dict[str, list[float]], **facts: Any) -> None:
    """A side-by-side timing's result file: each way's figures, their medians, the machine.
    Prints the medians."""
    import statistics

    medians = {name: statistics.median(values) for name, values in timings.items()}
    result = {
        "what": what,
        **facts,
        "timings": timings,
        "medians": medians,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians))


def time_processes(
    ways: dict[str, tuple[list[str], Path, dict[str, str]]], repeats: int
) -> dict[str, list[float]]:
    """Wall seconds of each way's whole process (argv, working directory, environment), run
    in turn `repeats` times, alternating: the same machine state for each. A process that
    fails stops the timing with its error."""
    import subprocess
    import time

    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, (argv, cwd, env) in ways.items():
            began = time.perf_counter()
            done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True)
            seconds[name].append(round(time.perf_counter() - began, 3))
            if done.returncode != 0:
                raise SystemExit(f"{name}: exit code {done.returncode}: {done.stderr[-2000:]!r}")
    return seconds


def ensure_neu(url: str, neu: Path) -> list[str]:
    """NEU-DET imported once with its fixed split; returns its defect classes."""
    from sqlalchemy import select

    from db.models import Dataset
    from db.session import session_scope
    from inspection.settings import get_settings
    from training.datasets import import_dataset

    with session_scope(url) as session:
        dataset = session.scalars(select(Dataset).where(Dataset.name == "neu-det")).first()
        if dataset is None:
            report = import_dataset(
                session, "voc", neu, "neu-det", get_settings().datasets_dir, neu / "splits"
            )
            print(f"imported NEU-DET: {report.split_counts}, {len(report.issues)} issues")
            dataset = session.scalars(select(Dataset).where(Dataset.name == "neu-det")).one()
        return list(dataset.classes)


def verdict_setups(classes: list[str]) -> list[tuple[str, list[str], str, bool]]:
    """(name, calibrated dimensions, class thresholds, crop verification) of the verdicts the
    benches compare. Verified setups also calibrate the crop threshold (off is one choice)."""
    from training.calibrate import PART

    return [
        ("detector alone, per-class thresholds", classes, "per-class", False),
        ("detector alone, one shared threshold", classes, "shared", False),
        ("classifier alone", [PART], "auto", False),
        ("detector and classifier, per-class thresholds", [*classes, PART], "per-class", False),
        ("detector and classifier, one shared threshold", [*classes, PART], "shared", False),
        ("detector, crops verified, per-class thresholds", classes, "per-class", True),
        ("detector, crops verified, one shared threshold", classes, "shared", True),
    ]


def compare_verdicts(
    val: list,
    test: list,
    classes: list[str],
    max_miss_rate: float,
    test_subsets: dict[str, list[bool]] | None = None,
) -> dict:
    """Each setup calibrated on val (scored parts, `training.calibrate.score_parts`) for the
    target, then its rates on test at the same thresholds; and on each of `test_subsets` (a
    name and, per test part, whether it belongs), where given."""
    import math

    from training.calibrate import (
        apply_thresholds,
        calibrate,
        calibrate_with_verification,
        rate_report,
    )

    results = {}
    verified = any(d.verification is not None for p in val for d in p.detections)
    for name, dimensions, class_thresholds, verification in verdict_setups(classes):
        if verification and not verified:
            continue
        verify = None
        if verification:
            verify, calibrated = calibrate_with_verification(
                val, dimensions, max_miss_rate, class_thresholds
            )
        else:
            calibrated = calibrate(
                [p.scores() for p in val], dimensions, max_miss_rate, class_thresholds
            )
        results[name] = {
            "thresholds": {
                k: (v if math.isfinite(v) else None) for k, v in calibrated.thresholds.items()
            },
            "val": calibrated.report(),
            "test": rate_report(
                apply_thresholds([p.scores(verify) for p in test], calibrated.thresholds)
            ),
        }
        for subset, members in (test_subsets or {}).items():
            chosen = [p for p, member in zip(test, members, strict=True) if member]
            results[name].setdefault("test_subsets", {})[subset] = rate_report(
                apply_thresholds([p.scores(verify) for p in chosen], calibrated.thresholds)
            )
        if verification:
            results[name]["verify"] = verify
            results[name]["test_misses"] = why_missed(test, calibrated.thresholds, verify)
        print(name, json.dumps(results[name]["test"]))
    return results


def why_missed(parts: list, thresholds: dict[str, float], verify: float | None) -> dict:
    """The defective parts a verified verdict passes, split by cause: the detector found none
    of their defects above its threshold, or it did and verification rejected every one (with
    the best crop probability among those rejected)."""
    from training.calibrate import NEVER

    not_found, rejected = 0, []
    for part in parts:
        scores = part.scores(verify).scores
        if not part.defective or any(scores.get(d, -NEVER) >= t for d, t in thresholds.items()):
            continue
        found = [
            d
            for d in part.detections
            if d.matches_defect and d.confidence >= thresholds.get(d.class_name, NEVER)
        ]
        if found:
            rejected.append(round(max(d.verification or 0.0 for d in found), 4))
        else:
            not_found += 1
    return {
        "not_found_by_the_detector": not_found,
        "found_but_rejected_by_verification": len(rejected),
        "best_rejected_crop_probabilities": sorted(rejected),
    }


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """A measurement of model versions kept in a file: a model version does not change, so
    measuring it again for another analysis only costs time."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(value))
    return value


def cached_scores(path: Path, score: Callable[[], list]) -> list:
    """Scored parts (`training.calibrate.ScoredPart`) of a pair of model versions, kept."""
    from training.calibrate import ScoredDetection, ScoredPart

    return [
        ScoredPart(
            item["defective"],
            tuple(ScoredDetection(**d) for d in item["detections"]),
            item["part_probability"],
        )
        for item in cached_json(path, lambda: [asdict(p) for p in score()])
    ]


def calibration_cross_check(
    val: list, classes: list[str], max_miss_rate: float, repeats: int = 10, centre: bool = True
) -> dict:
    """How a calibration holds on parts it did not see, without touching test: val split into
    halves (each with half the defective and half the good parts), calibrated on one half and
    counted on the other, both ways, `repeats` times with different halves. `centre` False
    leaves thresholds on the faintest caught defect, to show what centring them in the gap buys."""
    import random

    from db.queries import PartCounts
    from training.calibrate import (
        PART,
        apply_thresholds,
        calibrate,
        calibrate_with_verification,
    )

    def halves(seed: int) -> tuple[list, list]:
        rng = random.Random(seed)
        first: list = []
        second: list = []
        for defective in (True, False):
            group = [p for p in val if p.defective == defective]
            rng.shuffle(group)
            first += group[: len(group) // 2]
            second += group[len(group) // 2 :]
        return first, second

    scored = any(d.verification is not None for p in val for d in p.detections)
    found = {}
    for name, dimensions, class_thresholds, verified in verdict_setups(classes):
        if PART in dimensions or (verified and not scored):
            continue  # about the detection and crop thresholds only
        totals = {"n_defective": 0, "n_missed": 0, "n_good": 0, "n_false_calls": 0}
        for seed in range(repeats):
            for fit, held_out in permutations(halves(seed)):
                verify = None
                if verified:
                    verify, result = calibrate_with_verification(
                        fit, dimensions, max_miss_rate, class_thresholds, centre
                    )
                else:
                    result = calibrate(
                        [p.scores() for p in fit],
                        dimensions,
                        max_miss_rate,
                        class_thresholds,
                        centre,
                    )
                counts = apply_thresholds([p.scores(verify) for p in held_out], result.thresholds)
                for key in totals:
                    totals[key] += getattr(counts, key)
        counted = PartCounts(**totals)
        # No upper bounds: the halvings overlap, so the counts are not independent trials.
        found[name] = {
            **totals,
            "miss_rate": counted.miss_rate,
            "false_call_rate": counted.false_call_rate,
        }
    return {"repeats": repeats, "setups": found}


def oracle_on_test(test: list, classes: list[str], max_miss_rate: float) -> dict:
    """The fewest false calls the scores allow at the target with thresholds chosen on test
    itself: not a result (nothing is held out) but the distance to the target that better
    calibration alone could close; what is left needs a better model."""
    from training.calibrate import calibrate, calibrate_with_verification

    shared = calibrate([p.scores() for p in test], classes, max_miss_rate, "shared")
    found = {"detector alone, one shared threshold": shared}
    if any(d.verification is not None for p in test for d in p.detections):
        _, verified = calibrate_with_verification(test, classes, max_miss_rate, "shared")
        found["detector, crops verified, one shared threshold"] = verified
    return {
        name: {"n_missed": r.n_missed, "n_false_calls": r.n_false_calls, **r.details}
        for name, r in found.items()
    }


def training_stages(url: str, version_ref: int | str) -> list[dict]:
    """The training runs behind a model version, oldest first: a fine-tuned model's schedule is
    its base model's plus its own, so a result file reusing it reports every epoch it had."""
    from sqlalchemy import select

    from db.models import TrainingJob
    from db.registry import get_model_version
    from db.session import session_scope

    stages: list[dict] = []
    ref: int | str | None = version_ref
    while ref is not None:
        with session_scope(url) as session:
            version = get_model_version(session, ref)
            job = session.scalars(
                select(TrainingJob).where(TrainingJob.result_model_version_id == version.id)
            ).first()
            if job is None:
                break
            params = dict(job.params)
            wall = (
                round((job.finished_at - job.started_at).total_seconds(), 1)
                if job.started_at and job.finished_at
                else None
            )
            stages.append(
                {
                    "version": version.name,
                    "architecture": params.get("architecture") or params.get("backbone"),
                    # trained, not asked for: a time budget (hours) re-plans the epochs
                    "epochs": version.metrics.get("epochs") or params.get("epochs"),
                    "imgsz": params.get("imgsz"),
                    # where it ran; older versions only kept the device asked for
                    "device": version.metrics.get("device") or params.get("device") or "default",
                    "wall_s": wall,
                }
            )
            if params.get("hours"):
                stages[-1]["hours_budget"] = params["hours"]
            if params.get("hard_negatives_from"):
                stages[-1]["hard_negatives_from"] = params["hard_negatives_from"]
            ref = params.get("from_model")
    return stages[::-1]


def total_wall_seconds(stages: list[dict]) -> float | None:
    """Training wall time over every stage; None when a stage's is unknown, not a short sum."""
    walls = [stage["wall_s"] for stage in stages]
    return round(sum(walls), 1) if walls and None not in walls else None


def _where(stage: dict) -> str:
    """A stage trained on a GPU says so (and its time budget): the result file's hardware line
    is the machine that scored the models, not always the one that trained them."""
    device = str(stage.get("device", "default"))
    on = " on a GPU" if device not in ("cpu", "default") else ""
    budget = f" (a {stage['hours_budget']} h budget)" if stage.get("hours_budget") else ""
    return on + budget


def describe_stages(stages: list[dict]) -> str:
    """'25 epochs at 320 px, then 30 more at 320 px' for a model card or result table."""
    parts = [f"{s['epochs']} epochs at {s['imgsz']} px{_where(s)}" for s in stages[:1]]
    parts += [
        f"then fine-tuned {s['epochs']} more at {s['imgsz']} px{_where(s)}" for s in stages[1:]
    ]
    sources = sorted(
        {str(s["hard_negatives_from"]) for s in stages if s.get("hard_negatives_from")}
    )
    if sources:
        parts.append(
            f"with detector {', '.join(sources)}'s false detections on train as good crops"
        )
    return ", ".join(parts) or "schedule unknown"

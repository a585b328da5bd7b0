"""What the benchmark scripts share. Each script sets DEFECTS_DATA_DIR before importing this, so
that its own working database and datasets are used."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def hardware() -> str:
    """The machine a figure was measured on, in words, for the result files."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


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


def verdict_setups(classes: list[str]) -> list[tuple[str, list[str], str]]:
    """(name, calibrated dimensions, class thresholds) of the verdicts the benches compare."""
    from training.calibrate import PART

    return [
        ("detector alone, per-class thresholds", classes, "per-class"),
        ("detector alone, one shared threshold", classes, "shared"),
        ("classifier alone", [PART], "auto"),
        ("detector and classifier, per-class thresholds", [*classes, PART], "per-class"),
        ("detector and classifier, one shared threshold", [*classes, PART], "shared"),
    ]


def compare_verdicts(val: list, test: list, classes: list[str], max_miss_rate: float) -> dict:
    """Each setup calibrated on val for the target, then its rates on test."""
    import json
    import math

    from training.calibrate import apply_thresholds, calibrate, rate_report

    results = {}
    for name, dimensions, class_thresholds in verdict_setups(classes):
        calibrated = calibrate(val, dimensions, max_miss_rate, class_thresholds)
        results[name] = {
            "thresholds": {
                k: (v if math.isfinite(v) else None) for k, v in calibrated.thresholds.items()
            },
            "val": calibrated.report(),
            "test": rate_report(apply_thresholds(test, calibrated.thresholds)),
        }
        print(name, json.dumps(results[name]["test"]))
    return results

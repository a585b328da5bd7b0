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

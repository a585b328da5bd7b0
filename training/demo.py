"""The demo model shipped in the repository, registered on first start so a new user sees a real
inspection at once."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ModelKind, ModelVersion
from db.registry import ensure_station, production_model, promote
from inspection.batch import found_weights, sha256_of
from inspection.errors import UserError
from inspection.images import replace_synced, write_fix
from training.versions import register_model_version

DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "neu-det-demo"
DEMO_LINE, DEMO_STATION = "Demo line", "Station 1"
# How a shipped demo's version is told apart from the user's own models.
DEMO_NOTES = "demo model shipped with the product (steel strip, NEU-DET): retrain on your own parts"


@dataclass(frozen=True)
class DemoInstall:
    version_name: str | None
    promoted: bool
    message: str


def _users_operating_point(thresholds: dict[str, Any], card: dict[str, Any]) -> str | None:
    """How the user set an earlier demo's thresholds, or None where they are as shipped.

    Every shipped demo is calibrated on the same split; thresholds calibrated on another one (the
    user's own parts) or set by hand (a save on the Settings page drops the calibration) are
    the user's operating point, which a newer demo at its shipped thresholds would undo."""
    calibration = thresholds.get("calibration") or {}
    shipped = (card.get("thresholds") or {}).get("calibration") or {}
    # (The split alone took the demo recalibrated on neu-det/val at another target for the
    # shipped point.)
    # (class_thresholds: not in the first demo's card, compared where both hold it.)
    how = ["data", "split", "max_miss_rate"]
    how += ["class_thresholds"] if "class_thresholds" in calibration.keys() & shipped else []
    if all(calibration.get(key) == shipped.get(key) for key in how):
        return None
    if calibration:
        return (
            f"calibrated on {calibration.get('data')}/{calibration.get('split')} for a miss "
            f"rate of at most {calibration.get('max_miss_rate')}"
        )
    return "thresholds set by hand"


def _copy_whole(source: Path, target: Path) -> None:
    """Copied under another name and renamed: a copy cut short (a station stopped, two
    `make run`s at once) is never taken for the file. Synced, so that a power cut after the
    install does not leave the weights a registered version names empty under their name."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(source, partial)
        replace_synced(partial, target)
    except OSError as exc:
        # (A full disk left the half copy, under a new name at every try, holding its space.)
        partial.unlink(missing_ok=True)
        raise UserError(
            f"cannot copy the demo's {source.name} into {target.parent}: "
            f"{exc.strerror or exc}; {write_fix(exc)} and run the same command again"
        ) from exc


def install_demo(session: Session, models_dir: Path, demo_dir: Path = DEMO_DIR) -> DemoInstall:
    """Register the demo detector once; make it production only where there is none, or where
    an earlier demo is, at its shipped thresholds, at the first install of the newer one."""
    card = demo_dir / "model.json"
    weights = demo_dir / "weights.pt"
    if not card.is_file() or not weights.is_file():
        return DemoInstall(None, False, f"no demo model in {demo_dir}: nothing to install")
    meta = json.loads(card.read_text())
    digest = sha256_of(weights)
    existing = session.scalars(select(ModelVersion).where(ModelVersion.sha256 == digest)).first()
    version = existing or register_model_version(
        session,
        weights,
        models_dir,
        kind=ModelKind.DETECTOR,
        architecture=meta["architecture"],
        class_names=meta["classes"],
        image_size=int(meta["imgsz"]),
        metrics=meta.get("metrics", {}),
        thresholds=meta.get("thresholds"),
        name=meta["name"],
        notes=DEMO_NOTES,
    )
    local = found_weights(version.file_path, version.sha256)
    if not local.is_file():
        # Registered by another station sharing this database, from its own data folder: the
        # shipped file, the version's exact bytes, goes where this machine looks for it.
        local = models_dir / local.parent.name / local.name
        local.parent.mkdir(parents=True, exist_ok=True)
        _copy_whole(weights, local)
    onnx_file = demo_dir / "weights.onnx"
    if onnx_file.is_file():
        target = local.with_suffix(".onnx")
        # (Written again where one was cut short: CPU stations judge with it, not the .pt.)
        if not target.exists() or target.stat().st_size != onnx_file.stat().st_size:
            _copy_whole(onnx_file, target)
    current = production_model(session, ModelKind.DETECTOR)
    if current is None:
        promote(session, version)
        ensure_station(session, DEMO_LINE, DEMO_STATION)
        return DemoInstall(
            version.name, True, f"demo model {version.name} is the production detector"
        )
    # Only when the newer demo is first registered: `make run` installs the demo at every
    # start, and a rollback to the earlier demo was undone by the next one.
    if existing is None and current.id != version.id and current.notes == DEMO_NOTES:
        users = _users_operating_point(current.thresholds or {}, meta)
        if users is not None:
            return DemoInstall(
                version.name,
                False,
                f"demo model {version.name} registered; production stays {current.name} at the "
                f"operating point you gave it ({users}): to use {version.name}, calibrate it on "
                f"your parts and promote it (`defects models promote {version.name}`)",
            )
        # Production is an earlier shipped demo, which nobody replaced with a model of their
        # own: the newer demo takes its place, as a pull of the repository means it to.
        promote(session, version)
        return DemoInstall(
            version.name,
            True,
            f"demo model {version.name} replaces the earlier demo {current.name} in production "
            "(`defects models rollback` puts it back)",
        )
    said = "is registered already" if existing else "registered"
    return DemoInstall(
        version.name, False, f"demo model {version.name} {said}; production unchanged"
    )

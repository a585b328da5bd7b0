"""Registering trained weights as model versions: the file is copied under the data directory
and hashed, so a version always names exactly the bytes that produced its metrics."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from db.models import Dataset, ModelKind, ModelStage, ModelVersion
from db.registry import named_version
from db.session import DatabaseError, session_scope
from inspection.batch import found_weights, sha256_of, weights_there
from inspection.errors import UserError
from inspection.images import replace_synced, write_fix
from training.datasets import check_folder_name

DEFAULT_CONFIDENCE = 0.25


# How `train detector --from` notes a version's base (training/train_detector.py).
BASE_NOTE = re.compile(r"fine-tuned from (\S+?)(?:;|$)")
DISTILL_NOTE = re.compile(r"distilled with (\S+)")


def lineage(version: ModelVersion) -> str:
    """How `version` was made from others ("fine-tuned from v4, distilled from t with cwd"),
    "" for one trained alone: `models list` showed it only in `--json`."""
    base = BASE_NOTE.search(version.notes or "")
    said = [f"fine-tuned from {base[1]}"] if base else []
    if version.teacher is not None:
        method = DISTILL_NOTE.search(version.notes or "")
        with_method = f" with {method[1]}" if method and version.kind == ModelKind.DETECTOR else ""
        said.append(f"distilled from {version.teacher.name}{with_method}")
    return ", ".join(said)


def weights_file(version: ModelVersion) -> Path:
    """A version's weights, refused in one line where the file is gone (deleted, a data
    folder moved): export, evaluate, calibrate, training from it and backtests printed the
    system's "[Errno 2] No such file or directory", inspect and batch this line."""
    return weights_there(version.name, found_weights(version.file_path, version.sha256))


def default_thresholds(class_names: list[str]) -> dict[str, Any]:
    return {"per_class": dict.fromkeys(class_names, DEFAULT_CONFIDENCE), "iou": 0.45}


# Marks an operating point saved by hand (the Settings page): at the default confidence for
# every class it is otherwise the very point a version is registered with.
SET_BY_HAND = "set_by_hand"


def set_by_hand(thresholds: dict[str, Any], per_class: dict[str, float]) -> dict[str, Any]:
    """The operating point `thresholds` with `per_class` set by hand: no longer the calibrated
    one (its report dropped), and marked, so that `never_calibrated` tells it from the point a
    version is registered with even where every class is left at the default."""
    point = {**thresholds, "per_class": per_class, SET_BY_HAND: True}
    point.pop("calibration", None)
    return point


def never_calibrated(thresholds: dict[str, Any], class_names: list[str]) -> bool:
    """Whether an operating point is still the one a version is registered with: no
    calibration, and every class at the default confidence. Set by hand (the Settings page
    drops the calibration and marks it `SET_BY_HAND`), the thresholds are someone's choice,
    and not this; a point saved by hand before the mark was kept reads by its values alone."""
    if thresholds.get("calibration") or thresholds.get(SET_BY_HAND):
        return False
    per_class = thresholds.get("per_class") or {}
    default = thresholds.get("default", DEFAULT_CONFIDENCE)
    return all(float(per_class.get(c, default)) == DEFAULT_CONFIDENCE for c in class_names)


def _claim_version_folder(session: Session, models_dir: Path, base: str) -> tuple[str, Path]:
    """The first of `base`, `base-2`, ... that no version is named and whose folder this
    process creates itself: two trainings registered in the same second (two stations' jobs)
    took the same name and copied their weights into the same folder, so one version served
    the other's weights."""
    taken = set(
        session.scalars(select(ModelVersion.name).where(ModelVersion.name.like(f"{base}%")))
    )
    models_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = base if n == 1 else f"{base}-{n}"
        n += 1
        if candidate in taken:
            continue
        try:
            (models_dir / candidate).mkdir()  # (atomic: one process gets it)
        except FileExistsError:
            continue
        return candidate, models_dir / candidate


def _copy_weights(weights: Path, target: Path, made: Path | None, models_dir: Path) -> None:
    """Copied under another name and renamed once whole. A disk that filled during the copy
    stopped the registration with the system's bare "[Errno 28]" and left the half file (and
    the version's folder) behind, holding the space: both are removed now (`made`, the folder
    made for this version), and the error says in one line that nothing is registered.

    Synced in place, with the version's folder and the model store (either may be new) named
    on disk: the version is committed next, and after a power cut it named weights that were
    empty or gone."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copy2(weights, partial)
        replace_synced(partial, target, models_dir, models_dir.parent)
    except BaseException as exc:
        # (Stopped during the copy, Ctrl-C left the half file and an empty version's folder,
        # which no version names, and the next registration took NAME-2.)
        partial.unlink(missing_ok=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        raise UserError(
            f"cannot copy the weights {weights} into {target.parent}: {exc.strerror or exc}; no "
            f"model version is registered: {write_fix(exc)} and run the same command again"
        ) from exc


def _named_by_a_version(session: Session, file_path: str) -> bool | None:
    """Whether a committed version names `file_path`, read on a connection of its own; None
    where the database cannot tell (still unreachable). "Named" and "cannot tell" were both
    True, and a registration the database confirms was told it "may have been" registered."""
    try:
        with session.get_bind().connect() as connection:
            named = connection.scalar(
                select(ModelVersion.id).where(ModelVersion.file_path == file_path)
            )
    except Exception:  # noqa: BLE001 - unknown is said as unknown, not as either answer
        return None
    return named is not None


def _removed_unless_committed(session: Session, folder: Path, file_path: str) -> None:
    """`folder`, made and filled by a registration, removed where the registration's
    transaction is rolled back rather than committed: stopped (Ctrl-C, SIGTERM) or failed after
    the weights were copied and before the commit, it was left behind in the model store, a
    copy of the weights that no version names, and the next registration took NAME-2.

    A commit that failed is no proof of a rollback: a connection dropped during COMMIT raises
    although the server may have committed, and the folder was removed under a version the
    database names. After a commit attempt it is removed only where no version names
    `file_path` (kept where the database cannot say: `unnamed_version_folders` tells it later)."""
    pending, committing = [True], []

    def commit_begun(session: Session) -> None:
        committing.append(True)

    def committed(session: Session) -> None:
        pending.clear()

    def rolled_back(session: Session, previous: SessionTransaction) -> None:
        if pending and not previous.nested:  # (a savepoint's rollback undoes less)
            pending.clear()
            if committing and _named_by_a_version(session, file_path) is not False:
                return  # (kept where the database cannot say: a leftover is said later)
            shutil.rmtree(folder, ignore_errors=True)

    event.listen(session, "before_commit", commit_begun)
    event.listen(session, "after_commit", committed)
    event.listen(session, "after_soft_rollback", rolled_back)


# How long a folder under the model store that no version names is left alone before it is
# said to be a leftover: a registration copies and records its weights within seconds to
# minutes, and one in progress on another station sharing the store must never be removed.
UNNAMED_FOLDER_AGE = timedelta(hours=1)


def unnamed_version_folders(
    session: Session, models_dir: Path, older_than: timedelta = UNNAMED_FOLDER_AGE
) -> list[Path]:
    """The folders in the model store that no model version names, none of them changed in
    `older_than`: a registration killed (kill -9, a power cut) between the weights' copy and
    the database commit left one, a copy of the weights holding the space, said nowhere."""
    if not models_dir.is_dir():
        return []
    names = set(session.scalars(select(ModelVersion.name)))
    used = {Path(p).parent for p in session.scalars(select(ModelVersion.file_path))}
    before = time.time() - older_than.total_seconds()
    left = []
    for folder in sorted(models_dir.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or folder.is_symlink():
            continue
        if folder.name in names or folder.resolve() in used or folder in used:
            continue
        try:
            changed = max(
                [folder.stat().st_mtime, *(entry.stat().st_mtime for entry in folder.iterdir())]
            )
        except OSError:
            continue  # (removed meanwhile, or unreadable: not said to be removable)
        if changed < before:
            left.append(folder)
    return left


def register_model_version(
    session: Session,
    weights: Path,
    models_dir: Path,
    *,
    kind: ModelKind,
    architecture: str,
    class_names: list[str],
    image_size: int,
    metrics: dict[str, Any] | None = None,
    thresholds: dict[str, Any] | None = None,
    dataset: Dataset | None = None,
    teacher: ModelVersion | None = None,
    name: str | None = None,
    notes: str = "",
) -> ModelVersion:
    """Copy `weights` into the model store and record it as a candidate version."""
    if name is None:
        version_name, folder = _claim_version_folder(
            session, models_dir, f"{architecture}-{datetime.now():%Y%m%d-%H%M%S}"
        )
        made = True
    else:
        check_folder_name(name, "model version")
        if session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first():
            raise UserError(f"a model version named {name!r} already exists")
        version_name, folder = name, models_dir / name
        made = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights.name
    _copy_weights(weights, target, folder if made else None, models_dir)
    file_path = str(target.resolve())
    if made:
        _removed_unless_committed(session, folder, file_path)
    version = ModelVersion(
        name=version_name,
        kind=kind,
        architecture=architecture,
        file_path=file_path,
        sha256=sha256_of(target),
        image_size=image_size,
        classes=class_names,
        dataset_id=dataset.id if dataset else None,
        teacher_id=teacher.id if teacher else None,
        metrics=metrics or {},
        thresholds=thresholds or default_thresholds(class_names),
        stage=ModelStage.CANDIDATE,
        notes=notes,
    )
    session.add(version)
    session.flush()
    session.info[_REGISTERED] = (version_name, file_path)
    return version


# In a session's `info`: the name and weights of the version `register_model_version` added.
_REGISTERED = "registered_version"


@contextmanager
def registration_scope(url: str) -> Iterator[Session]:
    """`session_scope` for a training's registration of its version. A connection dropped
    during COMMIT raises although the server may have committed: the training ended on
    "database error ..." alone, as if nothing were registered, while a version may well be.
    Where the commit (not a statement before it) failed and the database, read again, names
    the version's weights, the commit was made: the transaction, the job's end with it, stands
    and nothing is raised (the job was else recorded failed under its registered version).
    Where the database cannot say (`_named_by_a_version`), the error says the version may
    have been registered."""
    begun: list[Session] = []
    try:
        with session_scope(url) as session:
            yield session
            begun.append(session)  # (the body is done: what fails now is the commit)
    except DatabaseError as exc:
        registered = begun[0].info.get(_REGISTERED) if begun else None
        named = _named_by_a_version(begun[0], registered[1]) if registered else False
        if named:
            return
        if named is False:
            raise
        raise DatabaseError(
            f"{exc}; the connection failed during the commit, and the version "
            f"{registered[0]} may have been registered all the same: check `defects models "
            "list` before training it again"
        ) from exc


def promotion_warnings(url: str, name: str, replaced: str | None) -> list[str]:
    """What the figures say against a promotion just made: a model that finds nothing went
    into production without a word. (Said, not refused: the figures may be of other data.)
    Both versions by their names alone: a name of digits ("1") read as an id was another's."""
    with session_scope(url) as session:
        new = named_version(session, name)
        metrics = dict(new.metrics or {})
        old = named_version(session, replaced) if replaced else None
        old_metrics = dict(old.metrics or {}) if old else {}
        same_data = old is not None and old.dataset_id == new.dataset_id
        uncalibrated = never_calibrated(dict(new.thresholds or {}), list(new.classes or []))
        # Classes the replaced detector found that this one does not know (retired, renamed).
        dropped = [c for c in (old.classes if old else []) if c not in (new.classes or [])]
    map50 = metrics.get("map50", metrics.get("val_map50"))
    warnings = []
    if map50 is None and "miss_rate" not in metrics:
        warnings.append(
            f"{name} has no evaluation: `defects evaluate {name} --data NAME --split test` "
            "gives its miss and false-call rates"
        )
    if map50 is not None and map50 < 0.05:
        warnings.append(f"{name} has mAP50 {map50:.3f}: it finds almost nothing")
    if metrics.get("miss_rate") == 1.0:
        warnings.append(f"{name} missed every defective part of its evaluation")
    if uncalibrated:
        # (A fine-tuned version does not take its base's thresholds: its scores are its own.)
        warnings.append(
            f"{name} was never calibrated: stations judge with it at {DEFAULT_CONFIDENCE} for "
            "every class, at a miss rate nobody measured; `defects calibrate "
            f"{name} --data NAME --split val --max-miss-rate RATE` (or the Settings page) "
            "sets its thresholds for a miss-rate target"
        )
    # (Test figures of both, on the same data: a val figure against a test one says nothing.)
    test_map50, old_map50 = metrics.get("map50"), old_metrics.get("map50")
    if (
        same_data
        and test_map50 is not None
        and old_map50 is not None
        and test_map50 < old_map50 - 0.01
    ):
        warnings.append(
            f"{name} has mAP50 {test_map50:.3f} on the data {replaced} scored {old_map50:.3f} on: "
            f"`defects models rollback` puts {replaced} back"
        )
    if dropped:
        # (Said nowhere: a part whose only defect was of a retired class passed from then on.)
        warnings.append(
            f"{name} does not know {', '.join(dropped)}, which {replaced} detected: a part whose "
            "only defects are of these classes now passes; an export of reviews keeps the "
            "reviewed defects of these classes (confirmed or added) as new classes after "
            f"{name}'s own, to fine-tune it on them again"
        )
    return warnings

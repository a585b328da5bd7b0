"""Models: versions side by side, retraining in the background, backtests, promote and roll back."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st
from sqlalchemy import select

from dashboard.auth import engineers_only
from dashboard.state import database_ready, flash, local_time, zone_label
from dashboard.text import plain
from db.models import Dataset, JobStatus, ModelKind, ModelStage, ModelVersion, TrainingJob
from db.registry import (
    NotFoundError,
    production_model,
    promote_version,
    roll_back,
    rollback_target,
)
from db.session import session_scope
from inspection.errors import UserError
from inspection.settings import get_settings
from training.backtest import backtest, recorded_rates
from training.datasets import check_trainable, dataset_yaml
from training.jobs import (
    RECENT_JOBS,
    job_alive,
    log_tail,
    mark_ended,
    process_alive,
    start_detector_training,
)
from training.train_detector import refuse_other_classes
from training.versions import promotion_warnings, unnamed_version_folders


class JobRow(NamedTuple):
    """A training job as read inside the session, used after it has closed."""

    id: int
    kind: str
    status: JobStatus
    progress: float
    pid: int | None
    host: str | None
    error: str | None
    result_id: int | None
    recorded_at: datetime
    process_start: str | None


# Session key: the production detector (id, name) the retraining form was last drawn with.
RETRAIN_DRAWN = "retrain_production_drawn"


def _pct(value: object) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "-"


def _figure(value: object) -> str:
    """A figure as `defects models list` gives it: a missing one was shown as "None"."""
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


state = database_ready()
st.title("Models")
engineers_only(state.url, "Models")
with session_scope(state.url) as session:
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())).all()
    # (Left by a registration killed before its commit: a copy of weights said nowhere.)
    models_dir = get_settings().models_dir
    unnamed = unnamed_version_folders(session, models_dir)
    rows = [
        {
            "name": v.name,
            "kind": v.kind.value,
            "architecture": v.architecture,
            "stage": v.stage.value,
            "mAP50 (test)": _figure((v.metrics or {}).get("map50")),
            "miss rate (test)": _pct((v.metrics or {}).get("miss_rate")),
            "false-call rate (test)": _pct((v.metrics or {}).get("false_call_rate")),
            "val mAP50": _figure((v.metrics or {}).get("val_map50")),
            # (One "accuracy" column showed test top-1 over parts or, failing it, val
            # accuracy over parts and crops, without saying which.)
            "top-1 (test)": _figure((v.metrics or {}).get("top1_accuracy")),
            "val accuracy (parts and crops)": _figure((v.metrics or {}).get("val_accuracy")),
            "teacher": v.teacher.name if v.teacher else "",
            # How it was made (a distilled student's loss, a fine-tuned one's base), as
            # `defects models list --json` says: the page showed the teacher alone.
            "notes": v.notes or "",
            # Stored in UTC: shown in the server's local time, as the other pages, and said.
            f"created ({zone_label()})": local_time(v.created_at),
        }
        for v in versions
    ]
    detectors = [v.name for v in versions if v.kind == ModelKind.DETECTOR]
    # Detectors only: a classifier was offered here, and refused once chosen ("backtests run
    # on detectors").
    candidates = [
        v.name for v in versions if v.stage == ModelStage.CANDIDATE and v.kind == ModelKind.DETECTOR
    ]
    datasets = list(session.scalars(select(Dataset.name).order_by(Dataset.name)))
    jobs = session.scalars(
        select(TrainingJob).order_by(TrainingJob.created_at.desc()).limit(RECENT_JOBS)
    ).all()
    job_rows = [
        JobRow(
            j.id,
            j.kind,
            j.status,
            j.progress,
            j.pid,
            j.host,
            j.error,
            j.result_model_version_id,
            j.created_at,
            j.process_start,
        )
        for j in jobs
    ]
    production = production_model(session, ModelKind.DETECTOR)
    production_name = production.name if production else None
    production_drawn = (production.id, production.name) if production else None
    earlier = rollback_target(session, ModelKind.DETECTOR)
    rollback_to = earlier.name if earlier else None

if not rows:
    st.info(
        "No model versions yet. Train one: `defects train detector --data NAME`, or start one below."
    )
else:
    st.dataframe(pd.DataFrame(rows), hide_index=True)
if unnamed:
    st.warning(
        f"{len(unnamed)} folder{'s' if len(unnamed) > 1 else ''} in {plain(str(models_dir))} "
        "that no model version names, unchanged for over an hour (left by a registration "
        f"stopped before it was recorded): {plain(', '.join(f.name for f in unnamed))}. "
        f"Nothing uses {'them' if len(unnamed) > 1 else 'it'}: `defects models list` gives "
        "the command that removes them."
    )

st.subheader("Promote or roll back")
if detectors:
    left, right = st.columns(2)
    chosen = left.selectbox("Detector version", detectors, key="promote_choice")
    if left.button("Promote to production", disabled=chosen == production_name):
        try:
            promoted = promote_version(state.url, chosen)
        except ValueError as exc:  # a classifier: it is put to work by a calibration
            st.error(plain(exc))
        else:
            if promoted.already:  # (promoted meanwhile, from elsewhere)
                flash(f"{plain(chosen)} is already in production")
                st.rerun()
            replaced = f"; {plain(promoted.replaced)} archived" if promoted.replaced else ""
            flash(f"{plain(chosen)} is in production{replaced}")
            for warning in promotion_warnings(state.url, promoted.name, promoted.replaced):
                flash(plain(warning), "warning")  # (the command line says them; the page did not)
            st.rerun()
    # The button names the model it rolls back, and its key too: a second click on its way
    # after the first had rolled back is dropped, and another user's is refused.
    # (Offered with nothing to go back to, it was pressed to learn so.)
    if production_name and right.button(
        f"Roll back {plain(production_name)} to {plain(rollback_to)}"
        if rollback_to
        else f"Roll back {plain(production_name)}",
        key=f"rollback_{production_name}",
        disabled=rollback_to is None,
        help=None if rollback_to else "No earlier production detector to go back to.",
    ):
        try:
            restored = roll_back(state.url, ModelKind.DETECTOR, replacing=production_name)
            flash(f"{plain(restored)} is in production again")
            st.rerun()
        except (NotFoundError, ValueError) as exc:
            st.error(plain(exc))

st.subheader("Backtest a candidate on every reviewed part")
if candidates:
    candidate = st.selectbox("Candidate", candidates, key="backtest_choice")
    if st.button("Run backtest"):
        try:
            with st.spinner("Inspecting the reviewed parts..."):
                result = backtest(state.url, candidate)
            with session_scope(state.url) as session:
                # (Over the same parts: those the candidate learned from are in neither row.)
                current = recorded_rates(session, leaving_out=result.learned_parts)
            table = pd.DataFrame(
                [
                    {
                        "model": f"{candidate} (backtest)",
                        "miss rate": _pct(result.rates.miss_rate),
                        "misses": f"{result.rates.n_missed} of {result.rates.n_defective}",
                        "false-call rate": _pct(result.rates.false_call_rate),
                        "false calls": f"{result.rates.n_false_calls} of {result.rates.n_good}",
                    },
                    {
                        "model": f"{production_name or 'production'} (recorded)",
                        "miss rate": _pct(current.miss_rate),
                        "misses": f"{current.n_missed} of {current.n_defective}",
                        "false-call rate": _pct(current.false_call_rate),
                        "false calls": f"{current.n_false_calls} of {current.n_good}",
                    },
                ]
            )
            st.dataframe(table, hide_index=True)
            if result.learned:
                st.caption(
                    f"{result.learned} reviewed parts are in neither row: they are in the "
                    f"train or val split of {plain(', '.join(result.learned_from))}, which "
                    f"{plain(candidate)} learned from."
                )
            if result.unreadable:
                # (Counted silently, the two rows were over different parts: "1 of 25" beside
                # the History page's "1 of 26", and nothing said why.)
                st.warning(
                    f"{result.unreadable} of {result.parts + result.unreadable} reviewed parts "
                    "are not in the backtest: their image is missing from the image store or "
                    "cannot be read. The recorded figures count them."
                )
        except UserError as exc:
            st.error(plain(exc))
else:
    st.caption("No candidate detectors to backtest.")

st.subheader("Retrain on labeled defects")
if not datasets:
    st.info(
        "No datasets yet: import one (`defects import ...`) or export reviewed parts on the Review page."
    )
else:
    # The production model the form was drawn with in the run before, the one the user saw
    # named in it: a press after another promotion started the training from the new one.
    drawn_with = st.session_state.get(RETRAIN_DRAWN, production_drawn)
    st.session_state[RETRAIN_DRAWN] = production_drawn
    with st.form("retrain"):
        data = st.selectbox("Dataset", datasets)
        epochs = st.number_input("Epochs", min_value=1, value=50)
        imgsz = st.number_input(
            "Image size (0: the dataset's own)",
            min_value=0,
            value=0,
            step=32,
            # (256 given here always trained a tiled dataset's tiles grown or shrunk to 256,
            # losing the resolution tiling keeps.)
            help="Training image size in pixels. 0: a tiled dataset's tile size, else 256.",
        )
        hours = st.number_input(
            "Time budget, hours (0: every epoch)",
            min_value=0.0,
            value=0.0,
            step=0.5,
            help="Training ends within this time, its schedule fitted to it; the epochs are then ignored.",
        )
        fine_tune = st.checkbox(
            f"Fine-tune from the production model ({plain(production_name)})"
            if production_name
            else "Fine-tune",
            value=bool(production_name),
            disabled=not production_name,
        )
        distill = st.checkbox(
            "Distill from the production model too, so retraining does not forget the old defect types",
            value=False,
            disabled=not production_name,
        )
        submitted = st.form_submit_button("Start training")
    asked = (data, int(epochs), int(imgsz), fine_tune, distill, float(hours))
    earlier = st.session_state.get("training_started")
    if submitted:
        if earlier is not None and earlier[0] == asked and process_alive(earlier[1]):
            # (A second press while the first's page was still waiting started a second,
            # identical training: two processes, two candidates.)
            st.warning(f"This training is running already (process {earlier[1]}).")
        else:
            refused = None
            try:
                with session_scope(state.url) as session:
                    # Checked here, at once: the training process refused it after the page's
                    # 2-second look (its start, torch's import included, takes longer), so the
                    # page said "Training started" and the refusal showed on a later visit.
                    dataset = dataset_yaml(session, data)[0]
                    check_trainable(dataset)
                    production_version = production_model(session, ModelKind.DETECTOR)
                    now = (
                        (production_version.id, production_version.name)
                        if production_version
                        else None
                    )
                    if now != drawn_with:
                        raise UserError(
                            "the production model changed since this form was drawn "
                            f"({drawn_with[1] if drawn_with else 'none'} then, "
                            f"{now[1] if now else 'none'} now): nothing was started; check "
                            "the form, drawn again for it, and start the training again"
                        )
                    architecture = (
                        production_version.architecture if production_version else "defect-yolo-s"
                    )
                    if production_version is not None and (fine_tune or distill):
                        # (The process refused it: "ended without a job", on a later visit.)
                        refuse_other_classes(
                            production_version,
                            data,
                            list(dataset.classes),
                            "fine-tuning" if fine_tune else "distilling",
                        )
            except UserError as exc:
                refused = str(exc)
            if refused is not None:
                st.error(plain(refused))
            else:
                # The training process takes `--from` and `--teacher` as an id or a name, a
                # name of digits ("1") as an id: it is given the production version's id.
                production_ref = str(production_version.id) if production_version else None
                pid, log = start_detector_training(
                    data,
                    int(epochs),
                    int(imgsz) or None,
                    production_ref if fine_tune and production_ref else None,
                    architecture=architecture,
                    teacher=production_ref if distill and production_ref else None,
                    hours=float(hours) or None,
                )
                st.session_state["training_started"] = (asked, pid, str(log))
                time.sleep(2)  # a mistake (a dataset whose files are gone) ends it at once
                if process_alive(pid):
                    st.success(
                        f"Training started (process {pid}); it goes on if you close this page. "
                        f"Log: {log}"
                    )
                else:
                    st.error(f"The training ended at once. The end of its log ({log}):")
                    st.code(log_tail(log))

started = st.session_state.get("training_started")
if (
    started is not None
    and not process_alive(started[1])
    and all(row.pid != started[1] for row in job_rows)
):
    # Ended after the first seconds' look, before recording its job (a check that refused
    # it, e.g. a dataset of other classes): said here once, or it vanished without a word.
    st.session_state.pop("training_started")
    st.error(
        f"The training started from this page ended without a job. The end of its log ({started[2]}):"
    )
    st.code(log_tail(Path(started[2])))

if job_rows:
    st.subheader("Training jobs")
    for (
        job_id,
        kind,
        status,
        progress,
        pid,
        host,
        error,
        result_id,
        recorded_at,
        started,
    ) in job_rows:
        running = status == JobStatus.RUNNING
        label = f"job {job_id} {kind}: {status.value}"
        alive = job_alive(pid, host, recorded_at, started) if running else None
        if running and alive is None:
            # (Its process is on another machine: a pid looked up here named nothing, and
            # the job was written off as failed while it trained on.)
            label += f" on {host}"
        elif running and not alive:
            mark_ended(state.url, job_id)
            label = f"job {job_id} {kind}: failed (its process ended without finishing)"
            error = "its process ended without finishing (killed, or the machine stopped)"
        st.progress(min(max(progress, 0.0), 1.0), text=label)
        if error:
            st.caption(plain(error))
        if result_id:
            st.caption(f"result: model version {result_id}")

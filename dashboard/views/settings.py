"""Settings: the production model's per-class thresholds (or calibrate them), lines and stations."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import select

from dashboard.auth import engineers_only, listens_beyond_localhost, serves_tls
from dashboard.state import database_ready, detector_info, flash, lines_and_stations
from dashboard.text import code, plain
from db.models import Dataset, ModelKind, ModelVersion
from db.registry import ensure_station
from db.session import session_scope
from inspection.errors import UserError
from inspection.verdict import Thresholds
from training.calibrate import (
    CLASS_OFF,
    CLASS_THRESHOLD_MODES,
    MAX_MISS_RATE_TARGET,
    PART,
    StoredCalibration,
    calibrate_model,
    calibration_notes,
    choice_lines,
    store_operating_point,
    thresholds_stamp,
)
from training.versions import set_by_hand

# The production model and the stamp of its thresholds that this session's sliders were drawn
# with, in the run before: a submit is judged against what the user saw, not what is stored now.
RENDERED = "settings_thresholds_rendered"


def _changed_message(name: str, promoted: bool) -> str:
    if promoted:
        return (
            f"{plain(name)} was promoted to production since you opened this page: here are its "
            "thresholds; make your change again (nothing was stored)."
        )
    return (
        f"The thresholds of {plain(name)} changed since you opened this page (by a calibration or "
        "another user): here they are now; make your change again (nothing was stored)."
    )


def _slider_format(threshold: float) -> str:
    """The slider's format for a stored threshold: to the thousandth, or as many decimals as
    it has (up to a millionth, finer than any confidence a station compares). At three, a
    calibrated 0.12345 showed as 0.123, while stations judged at 0.12345."""
    decimals = len(f"{threshold:.6f}".rstrip("0").partition(".")[2])
    return f"%.{max(3, decimals)}f"


def _rates(report: dict[str, Any]) -> str:
    """A calibration's counts with their 95% upper bounds, as stored: 0 of 18 missed is not a
    0% miss rate, which the counts alone let a reader take it for."""

    def bound(key: str) -> str:
        value = report.get(key)
        return "" if value is None else f" (95% upper bound {value:.1%})"

    return (
        f"{report.get('n_missed')} of {report.get('n_defective')} defective parts missed"
        f"{bound('miss_rate_upper_95')}; {report.get('n_false_calls')} false calls of "
        f"{report.get('n_good')} good parts{bound('false_call_rate_upper_95')}"
    )


def _classifier_caption(classifier: dict[str, Any]) -> str | None:
    """The part classifier the stored point judges with, where it fails parts of its own: with
    every class off it alone fails parts, and the page named neither it nor its threshold."""
    part = classifier.get("part")
    if part is None:
        return None  # (verification alone, or nothing: said by `choice_lines`)
    return (
        f"Part classifier {plain(classifier.get('version'))}: a part also fails where its "
        f"defect probability reaches {float(part):.4f}, whatever the detector finds."
    )


state = database_ready()
st.title("Settings")
access = engineers_only(state.url, "Settings")
if listens_beyond_localhost():
    address = st.get_option("server.address")
    where = code(address) if address else "on every address"
    if not access.accounts:
        st.warning(
            f"This dashboard listens beyond this machine ({where}) and has no accounts: "
            "anyone who reaches it can change everything here, promote or roll back models, "
            "start trainings and review under any name. Add an engineer's account on the server "
            "(`defects users add NAME --role engineer`, see README's Accounts): from then on "
            "everyone logs in."
        )
    elif not serves_tls():
        # With accounts, the passwords typed at the login form and the login tokens cross the
        # network too: over plain HTTP, anyone on it can read them.
        st.warning(
            f"This dashboard listens beyond this machine ({where}) over plain HTTP: passwords "
            "and login tokens cross the network in clear. Have it listen on this machine alone "
            "(`make run`, `HOST` left `localhost`) behind a reverse proxy with TLS, see "
            'README\'s "Serving the dashboard on a shared network".'
        )

st.subheader("Thresholds of the production model")
info = detector_info(state.url)
if info is None:
    st.info("No production model yet: promote one on the Models page.")
else:
    # The sliders' keys change with the stored thresholds: a slider keeps its own value across
    # runs, so after a calibration it would show (and a save would store back) the old ones.
    # That also leaves a submit after such a change with the new keys' stored values, not the
    # user's: the stamp the form was drawn with tells (RENDERED).
    stamp = thresholds_stamp(info.thresholds)
    rendered: tuple[int, str] | None = st.session_state.get(RENDERED)
    st.session_state[RENDERED] = (info.id, stamp)
    with st.form("thresholds"):
        st.caption(
            f"{plain(info.name)}: a part fails when a defect's confidence reaches its class's threshold. "
            "Lower catches more defects and fails more good parts."
        )
        # Each class's threshold (as stations read it: a class the point does not list has
        # its default), to the thousandth or finer (`_slider_format`), on a
        # slider up to 1.0; a class switched off (stored above 1.0, as a calibration stores
        # CLASS_OFF: no confidence reaches it) is a box of its own. The slider once went up to
        # CLASS_OFF and read 1.010, a value no one could tell meant "off".
        effective = Thresholds.from_dict(info.thresholds, info.classes).per_class
        edited = {}
        for name in info.classes:
            threshold, off_column = st.columns([3, 1], vertical_alignment="bottom")
            value = threshold.slider(
                plain(name),
                0.0,
                1.0,
                float(min(max(effective[name], 0.0), 1.0)),
                0.001,
                format=_slider_format(min(max(effective[name], 0.0), 1.0)),
                key=f"t_{info.id}_{stamp}_{name}",
                help="A part fails when a defect of this class reaches this confidence.",
            )
            off = off_column.checkbox(
                "never fails the part",
                effective[name] > 1.0,
                key=f"off_{info.id}_{stamp}_{name}",
                help=(
                    f"Off: a detection of {plain(name)} alone never fails a part, whatever the "
                    "slider says (the part classifier, where one is calibrated, still judges)."
                ),
            )
            edited[name] = CLASS_OFF if off else value
        # A class stored at 1.0 (an earlier release saved a class switched on again at the top
        # of its slider so) showed as on, its box unticked, with no word that it fails almost
        # no part: stations count a detection only at a confidence of exactly 1.0. Said of what
        # a save would store, the sliders as submitted: after a save refused, a slider moved to
        # 1.0 went unsaid and one moved down from it was still said to be at 1.0. (A class
        # switched on again at the top is refused below, and said there.)
        at_top = [name for name, value in edited.items() if value == 1.0 and effective[name] <= 1.0]
        if at_top:
            stored = all(effective[name] == 1.0 for name in at_top)
            st.warning(
                f"{', '.join(plain(name) for name in at_top)}: "
                f"{'stored at' if stored else 'at'} 1.000, where stations "
                "fail a part only on a detection of confidence exactly 1.0, so almost never. "
                'Tick "never fails the part" to switch it off, or set its slider lower to have '
                "it fail parts."
            )
        if st.form_submit_button("Save thresholds"):
            thresholds = set_by_hand(info.thresholds, edited)  # (no longer the calibrated point)
            # A class whose box was unticked keeps its slider at the top: saved, it read as on
            # while 1.000 is a confidence almost no detection reaches, so it failed no part.
            # A slider moved up to 1.0 is refused so too: in a browser the form's warning comes
            # only with the submit, and the save went through with it, the class off unsaid.
            # (A class stored at 1.0 already is left for its owner.)
            on_at_top = [
                name
                for name, value in edited.items()
                if 1.0 <= value < CLASS_OFF and effective[name] != 1.0
            ]
            if rendered == (info.id, stamp) and on_at_top:
                st.error(
                    f"{', '.join(plain(name) for name in on_at_top)}: at 1.000 a class fails "
                    "almost no part: set its slider lower to have it fail parts, or tick "
                    '"never fails the part" (nothing was stored).'
                )
            elif rendered != (info.id, stamp) or not store_operating_point(
                state.url, info.id, thresholds, unless_changed_from=stamp
            ):
                # Shown with the sliders at what is stored now (drawn above, new keys).
                st.error(
                    _changed_message(info.name, rendered is not None and rendered[0] != info.id)
                )
            else:
                flash("Saved: the next inspection uses them.")
                st.rerun()
    calibration = info.thresholds.get("calibration")
    if calibration:
        st.caption(
            f"Calibrated on {plain(calibration.get('data'))}/{calibration.get('split')} for a miss "
            f"rate of at most {calibration.get('max_miss_rate')}: {_rates(calibration)}."
        )
        if calibration.get("grid_warning"):
            # (Shown only in the preview, a calibration stored by `defects calibrate` on
            # another grid than the model's was never said here.)
            st.warning(plain(calibration["grid_warning"]))
    classifier_line = _classifier_caption(info.thresholds.get("classifier") or {})
    if classifier_line:
        st.caption(classifier_line)
    # Said from the stored thresholds: "one threshold shared by every class" was said of
    # classes all off, where the part classifier alone judges.
    for line in choice_lines(info.thresholds):
        st.caption(line[0].upper() + line[1:] + ".")

    st.subheader("Calibrate to a target miss rate")
    with session_scope(state.url) as session:
        datasets = list(session.scalars(select(Dataset.name).order_by(Dataset.name)))
        classifiers = list(
            session.scalars(
                select(ModelVersion.name).where(ModelVersion.kind == ModelKind.CLASSIFIER)
            )
        )
    if not datasets:
        st.caption("Calibration needs a labeled dataset: import one first.")
    else:
        with st.form("calibrate"):
            data = st.selectbox("Labeled dataset", datasets)
            split = st.selectbox(
                "Split", ["val", "train"], help="Keep the test split for reporting."
            )
            target = st.number_input(
                "Largest acceptable miss rate",
                0.0,
                MAX_MISS_RATE_TARGET,
                0.005,
                0.001,
                format="%.3f",
            )
            classifier = st.selectbox("Classifier", ["none", *classifiers])
            verification = st.selectbox(
                "Crop verification",
                ["off", "auto"],
                help="With a classifier, auto also picks how sure the classifier must be of a "
                "detection's crop for it to count: a lower detection threshold catches faint "
                "defects and verification rejects the false detections it lets in. Off is one "
                "of the choices auto weighs.",
            )
            class_thresholds = st.selectbox(
                "Class thresholds",
                CLASS_THRESHOLD_MODES,
                help="Per-class thresholds fail fewer good parts but, learned from few parts, "
                "let more new defects through. Auto shares one threshold unless the split holds "
                "at least (classes / target) defective parts.",
            )
            submitted = st.form_submit_button("Calibrate")
            if submitted and verification == "auto" and classifier == "none":
                # (calibrate's own message names the command line's --classifier.)
                st.error(
                    "Crop verification needs a classifier: choose one under Classifier, or set "
                    "Crop verification off."
                )
            elif submitted:
                try:
                    with st.spinner("Scoring the split..."):
                        st.session_state["pending_calibration"] = (
                            info.id,
                            stamp,  # accepted only over the thresholds it was computed beside
                            calibrate_model(
                                state.url,
                                info.name,
                                data,
                                split,
                                float(target),
                                None if classifier == "none" else classifier,
                                None if verification == "off" else "auto",
                                class_thresholds=class_thresholds,
                                store=False,
                            ),
                        )
                except UserError as exc:
                    st.error(plain(exc))
        pending: tuple[int, str, StoredCalibration] | None = st.session_state.get(
            "pending_calibration"
        )
        if pending is not None and pending[0] != info.id:
            # Computed for a model no longer in production: never offered for this one.
            del st.session_state["pending_calibration"]
            st.warning(
                f"The calibration you computed was dropped: {plain(info.name)} was promoted to "
                "production since. Calibrate again to change its thresholds."
            )
        elif pending is not None:
            # Shown before it replaces the production thresholds: a split too small for the
            # target, or without good parts, is a warning QA reads before accepting.
            _, computed_beside, stored = pending
            result = stored.calibration
            report = stored.operating_point["calibration"]
            st.markdown(
                f"**Calibrated on {plain(report['data'])}/{report['split']}** for a miss rate of "
                f"at most {report['max_miss_rate']:g}: {_rates(report)}."
            )
            # (The part classifier was listed as "__part__", an off class as an empty cell,
            # and the crop threshold chosen was not shown before it was used.)
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "dimension": "part classifier" if k == PART else k,
                            "threshold": f"{v:.4f}" if math.isfinite(v) else "off",
                        }
                        for k, v in result.thresholds.items()
                    ]
                ),
                hide_index=True,
            )
            for level, note in calibration_notes(result):
                (st.warning if level == "warning" else st.info)(note)
            if report.get("grid_warning"):
                st.warning(plain(report["grid_warning"]))
            for line in choice_lines(stored.operating_point, verify_auto="verify" in report):
                st.caption(line[0].upper() + line[1:] + ".")
            accept, discard = st.columns(2)
            if accept.button(
                f"Use these thresholds for {plain(info.name)}",
                type="primary",
                key="accept_calibration",
            ):
                del st.session_state["pending_calibration"]
                try:
                    # (Whether its classifier was archived since is checked in the saving
                    # transaction: one archived after the calibration was stored as if it were
                    # still a candidate, brought back unsaid.)
                    saved = computed_beside == stamp and store_operating_point(
                        state.url,
                        info.id,
                        stored.operating_point,
                        unless_changed_from=stamp,
                        classifier_archived=stored.classifier_archived,
                    )
                except UserError as exc:
                    flash(f"{plain(exc)}.", "error")
                    st.rerun()
                if saved:
                    flash(
                        f"Stored as the operating point of {plain(info.name)}: the next inspection uses it."
                        + (
                            f" {plain(stored.operating_point['classifier']['version'])} was "
                            "archived: it is a candidate again, since this operating point names it."
                            if stored.classifier_archived
                            else ""
                        )
                    )
                else:
                    flash(
                        f"The thresholds of {plain(info.name)} changed since this calibration was "
                        "computed (by another calibration or another user): the sliders show "
                        "them now. Nothing was stored; calibrate again to replace them.",
                        "error",
                    )
                st.rerun()
            if discard.button("Discard", key="discard_calibration"):
                del st.session_state["pending_calibration"]
                st.rerun()

st.subheader("Lines and stations")
known = lines_and_stations(state.url)
if known:
    st.dataframe(
        pd.DataFrame(
            [{"line": line, "stations": ", ".join(stations)} for line, stations in known.items()]
        ),
        hide_index=True,
    )
else:
    st.caption("No lines yet.")
with st.form("add_station"):
    left, right = st.columns(2)
    new_line = left.text_input("Line")
    new_station = right.text_input("Station")
    if st.form_submit_button("Add"):
        try:
            with session_scope(state.url) as session:
                known_before = {
                    (line.lower(), station.lower())
                    for line, stations in known.items()
                    for station in stations
                }
                added = ensure_station(session, new_line, new_station)
                where = f"{plain(added.line.name)} / {plain(added.name)}"
                # (As stored, not as typed: a name typed decomposed found the station there.)
                found = (added.line.name.lower(), added.name.lower())
            if found in known_before:
                flash(f"{where} is there already.", "info")
            else:
                flash(f"{where} added.")
            st.rerun()
        except ValueError as exc:
            st.error(plain(exc))

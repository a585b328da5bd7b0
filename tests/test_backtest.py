"""Reviews as ground truth: backtesting a candidate, the recorded rates, the export for retraining,
and a retraining started from the app as its own process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db.models import Dataset, Inspection, JobStatus, Prediction, Review, TrainingJob
from db.reviews import (
    DEFECT_REVIEWS,
    add_missed_defect,
    confirm_defect,
    decide_the_rest,
    mark_false_call,
    mark_good,
    review_queue,
)
from db.session import session_scope
from inspection.batch import BatchInspection, iter_source
from inspection.errors import UserError
from inspection.settings import get_settings
from tests.conftest import Trained, migrated, register_production_detector
from tests.synthetic import CLASSES, make_images
from training.backtest import backtest, export_reviews, recorded_rates
from training.datasets import check_trainable
from training.jobs import process_alive, start_detector_training


@pytest.fixture
def reviewed(database_url: str, trained: Trained, tmp_path: Path) -> str:
    """Four inspected parts: one confirmed defect, one false call, one missed defect, one good."""
    register_production_detector(database_url, trained.weights, tmp_path / "models")
    make_images(tmp_path / "in", n=4, seed=21)
    # Low thresholds so that the tiny model flags every part: each review kind gets a prediction.
    job = BatchInspection(database_url, tmp_path / "store", "L", "S")
    job.inspector.thresholds = type(job.inspector.thresholds).from_dict({"default": 0.001}, CLASSES)
    job.run(iter_source(str(tmp_path / "in")))
    with session_scope(database_url) as session:
        inspections = session.scalars(select(Inspection).order_by(Inspection.id)).all()
        first_prediction = [
            session.scalars(select(Prediction).where(Prediction.inspection_id == i.id)).first()
            for i in inspections
        ]
        assert all(p is not None for p in first_prediction)
        assert [q.part_id for q in review_queue(session)] != []
        confirm_defect(session, first_prediction[0].id, "ana")
        mark_false_call(session, first_prediction[1].id, "ana")
        add_missed_defect(session, inspections[2].part_id, "spot", (4, 4, 20, 20), "ana")
        mark_good(session, inspections[3].part_id, "ana")
        # Each part's other detections are still undecided: the first three wait for them.
        assert {q.part_id for q in review_queue(session)} <= {i.part_id for i in inspections[:3]}
        for inspection in inspections[:3]:
            decide_the_rest(session, inspection.id, "ana")
        assert review_queue(session) == []  # everything reviewed
    return database_url


def test_recorded_rates_and_backtest_agree_for_the_same_model(reviewed: str) -> None:
    with session_scope(reviewed) as session:
        recorded = recorded_rates(session)
    # Every part failed (thresholds 0.001): 2 defective caught, 2 good parts failed.
    assert (recorded.n_defective, recorded.n_missed, recorded.n_good, recorded.n_false_calls) == (
        2,
        0,
        2,
        2,
    )
    result = backtest(reviewed, "tiny")  # the production operating point: default thresholds
    assert result.parts == 4 and result.unreadable == 0
    assert result.rates.n_defective == 2 and result.rates.n_good == 2


def test_reviews_export_as_a_labeled_dataset(reviewed: str, tmp_path: Path) -> None:
    with session_scope(reviewed) as session:
        report = export_reviews(session, "from-reviews", CLASSES, tmp_path / "datasets")
    assert report.n_images == 4 and report.issues == []
    labels = {p.stem: p.read_text().split("\n")[0] for p in (report.root / "labels").rglob("*.txt")}
    assert sum(1 for line in labels.values() if line) == 2  # the confirmed and the missed defect
    assert yaml.safe_load((report.root / "data.yaml").read_text())["names"] == dict(
        enumerate(CLASSES)
    )
    with session_scope(reviewed) as session, pytest.raises(UserError, match="already exists"):
        export_reviews(session, "from-reviews", CLASSES, tmp_path / "datasets")


def test_a_new_defect_type_is_exported_after_the_detectors_classes_with_its_caveat(
    reviewed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export took the production detector's classes only: a part with a defect of a new
    type was left out, and the new type could never be trained on."""
    from typer.testing import CliRunner

    from training.cli import app

    time.sleep(0.01)  # (after the fixture's reviews, by the database's clock)
    with session_scope(reviewed) as session:
        part_ids = session.scalars(select(Inspection.part_id).order_by(Inspection.id)).all()
        crack_part = part_ids[2]  # its missed spot, and now a crack beside it
        add_missed_defect(
            session, crack_part, "crack", (30, 30, 40, 44), "bob", classes=CLASSES, new_class=True
        )
        report = export_reviews(session, "with-crack", CLASSES, tmp_path / "datasets")
    assert report.classes == [*CLASSES, "crack"] and report.n_images == 4
    names = yaml.safe_load((report.root / "data.yaml").read_text())["names"]
    assert names == dict(enumerate([*CLASSES, "crack"]))
    lines = [
        line.split()[0]
        for label in (report.root / "labels").rglob("*.txt")
        for line in label.read_text().splitlines()
    ]
    # The confirmed defect, the added spot and the crack, the one box of class index 2.
    assert len(lines) == 3 and lines.count("2") == 1
    # The three other parts were reviewed before any crack was added: said, not guessed.
    [caveat] = report.warnings
    assert caveat.file == "new class crack"
    assert "3 of the 4 parts exported were reviewed before the first crack" in caveat.reason
    assert "2 of them marked good" in caveat.reason
    monkeypatch.setenv("DEFECTS_DATABASE_URL", reviewed)
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["export-reviews", "--name", "week-49"])
    assert result.exit_code == 0, result.output
    assert "new classes, after tiny's own: crack" in result.output
    assert "3 of the 4 parts exported" in " ".join(result.output.split())


def test_a_new_class_whose_defects_are_all_on_parts_left_out_is_not_a_class_of_the_export(
    reviewed: str, tmp_path: Path
) -> None:
    """A new class added only on parts the export leaves out (undecided, image gone) was still
    one of the dataset's classes, without a box: fine-tuning grew the detector by a class it
    never saw, and the export said it carried a new class."""
    from db.models import Part

    with session_scope(reviewed) as session:
        part_ids = session.scalars(select(Inspection.part_id).order_by(Inspection.id)).all()
        add_missed_defect(
            session, part_ids[2], "crack", (30, 30, 40, 44), "bob", classes=CLASSES, new_class=True
        )
        part = session.get(Part, part_ids[2])
        assert part is not None
        Path(part.stored_path).unlink()  # (pruned: the part is left out)
        report = export_reviews(session, "no-crack", CLASSES, tmp_path / "datasets")
    assert report.classes == CLASSES and report.n_images == 3
    assert yaml.safe_load((report.root / "data.yaml").read_text())["names"] == dict(
        enumerate(CLASSES)
    )
    [caveat] = report.warnings
    assert caveat.file == "new class crack"
    assert "none of its defects is on a part exported" in caveat.reason


def test_a_few_reviewed_parts_export_as_a_dataset_to_retrain_on(
    reviewed: str, tmp_path: Path
) -> None:
    """Split by file-name hash alone, a few reviewed parts left val empty (here train 3, test 1)
    and `defects train detector` refused the export it had just been told to retrain on, saying
    to import it again with split lists, which an export cannot take."""
    with session_scope(reviewed) as session:
        report = export_reviews(session, "few", CLASSES, tmp_path / "datasets")
        check_trainable(session.scalars(select(Dataset).where(Dataset.name == "few")).one())
    counts = report.split_counts
    assert counts["train"]["boxes"] and counts["val"]["boxes"] and counts["val"]["good"]
    assert sum(c["images"] for c in counts.values()) == 4
    # One reviewed part: nothing to validate on, and the message says what to do.
    with session_scope(reviewed) as session:
        kept = session.scalars(
            select(Review.part_id).where(Review.kind.in_(DEFECT_REVIEWS))
        ).first()
        for review in session.scalars(select(Review).where(Review.part_id != kept)):
            session.delete(review)
        session.flush()
        export_reviews(session, "fewer", CLASSES, tmp_path / "datasets")
        fewer = session.scalars(select(Dataset).where(Dataset.name == "fewer")).one()
        with pytest.raises(UserError, match="review more parts") as refused:
            check_trainable(fewer)
    assert "split lists" not in str(refused.value)


def test_a_part_inspected_under_a_relative_data_dir_is_found_from_another_folder(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEFECTS_DATA_DIR=data: the database was found by absolute path, but each part's image
    was recorded relative to the folder the batch ran in; run from another folder, the Review
    page could not show it and the export of reviews left it out as missing."""
    station = tmp_path / "station"
    station.mkdir()
    monkeypatch.chdir(station)
    monkeypatch.setenv("DEFECTS_DATA_DIR", "data")
    get_settings.cache_clear()
    url = get_settings().resolved_database_url
    migrated(url)
    register_production_detector(url, trained.weights, get_settings().models_dir)
    make_images(tmp_path / "in", n=2, seed=5)
    BatchInspection(url, get_settings().images_dir, "L", "S").run(iter_source(str(tmp_path / "in")))
    with session_scope(url) as session:
        for part_id in session.scalars(select(Inspection.part_id)):
            mark_good(session, part_id, "ana")
    monkeypatch.chdir(tmp_path)  # the dashboard, or the training machine's shell, elsewhere
    with session_scope(url) as session:
        report = export_reviews(session, "elsewhere", CLASSES, get_settings().datasets_dir)
    assert report.issues == [] and report.n_images == 2


def test_reviews_export_from_the_command_line(
    reviewed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export to retrain on was only a button of the Review page: a retraining that runs
    from a script, or over SSH on the training machine, had no way to it."""
    from typer.testing import CliRunner

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", reviewed)
    get_settings.cache_clear()
    runner = CliRunner()
    result = runner.invoke(app, ["export-reviews", "--name", "week-48"])
    assert result.exit_code == 0, result.output
    assert "dataset week-48: 2 classes" in result.output
    assert "--data week-48 --from tiny" in result.output
    labels = list((get_settings().datasets_dir / "week-48" / "labels").rglob("*.txt"))
    assert len(labels) == 4
    again = runner.invoke(app, ["export-reviews", "--name", "week-48"])
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_review_validation(reviewed: str) -> None:
    with session_scope(reviewed) as session:
        part_id = session.scalars(select(Inspection.part_id)).first()
        with pytest.raises(ValueError, match="x2 > x1"):
            add_missed_defect(session, part_id, "spot", (10, 10, 5, 20), "ana")
        with pytest.raises(ValueError, match="outside"):
            add_missed_defect(session, part_id, "spot", (0, 0, 500, 20), "ana")
        with pytest.raises(ValueError, match="reviewer"):
            mark_good(session, part_id, " ")


def test_retraining_runs_as_its_own_process(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    # Fine-tuned from the production model and distilled from it: the retraining that keeps old defects.
    pid, log = start_detector_training(
        "synth",
        epochs=1,
        imgsz=64,
        from_model=trained.version_name,
        architecture="defect-yolo-n",
        log_dir=tmp_path,
        teacher=trained.version_name,
        hours=0.001,  # a budget as the Models page sets it: it reaches the training job
    )
    deadline = time.monotonic() + 240
    while process_alive(pid) and time.monotonic() < deadline:  # (it reaps its own child)
        time.sleep(0.5)
    with session_scope(trained.url) as session:
        job = session.scalars(select(TrainingJob).where(TrainingJob.pid == pid)).one()
        assert job.status == JobStatus.SUCCEEDED, log.read_text()[-2000:]
        assert job.result_model_version_id is not None and job.progress == 1.0
        assert job.kind == "distill-detector"
        assert job.params["hours"] == 0.001


def test_a_job_killed_outright_is_not_taken_for_running(database_url: str) -> None:
    """An ended child stays a zombie until reaped, which a signal check took for alive: a job
    killed outright showed as running for good."""
    import subprocess

    from training.jobs import mark_ended

    child = subprocess.Popen(["sleep", "30"])
    assert process_alive(child.pid)
    child.kill()
    time.sleep(0.3)  # ended, not reaped: a zombie
    assert not process_alive(child.pid)
    with session_scope(database_url) as session:
        job = TrainingJob(kind="train-detector", status=JobStatus.RUNNING, pid=child.pid)
        session.add(job)
        session.flush()
        job_id = job.id
    mark_ended(database_url, job_id)
    with session_scope(database_url) as session:
        ended = session.get(TrainingJob, job_id)
        assert ended is not None and ended.status == JobStatus.FAILED
        assert "ended without finishing" in (ended.error or "")


def test_a_later_process_given_a_dead_jobs_pid_is_not_the_job() -> None:
    """After the machine restarts, a killed job's pid can name another process: the job showed
    as running for good. A process that began after the job was recorded is not the job's."""
    import subprocess
    from datetime import timedelta

    from db.models import utcnow
    from training.jobs import job_alive, this_host

    child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        assert job_alive(child.pid, this_host(), utcnow() - timedelta(hours=1)) is False
        assert job_alive(child.pid, this_host(), utcnow()) is True
        assert job_alive(child.pid, None, None) is True  # (a job from before hosts were kept)
    finally:
        child.kill()
        child.wait()


def test_a_running_job_is_alive_after_the_clock_is_set_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job was told from a later process by comparing its recorded start with the process's,
    both by the wall clock: after the clock was set forward more than a few seconds (NTP, an
    operator), a dashboard started since called a running training dead and marked it failed.
    Its process's boot and start ticks, which no clock step moves, tell it now."""
    import subprocess
    from datetime import timedelta

    import psutil

    from db.models import utcnow
    from training.jobs import job_alive, process_start, this_host

    child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        started = process_start(child.pid)
        if started is None:
            pytest.skip("no /proc here to read a process's start from")
        recorded = utcnow()
        # The clock set 10 minutes forward since: psutil's start times move with it.
        real = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 600)
        assert job_alive(child.pid, this_host(), recorded, started) is True
        other = subprocess.Popen(["sleep", "30"])  # a later process: not the job's
        try:
            assert job_alive(other.pid, this_host(), recorded, started) is False
        finally:
            other.kill()
            other.wait()
        assert job_alive(child.pid, this_host(), recorded - timedelta(hours=1), "x:1") is False
    finally:
        child.kill()
        child.wait()


def test_an_export_with_no_reviewed_part_says_so(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With nothing reviewed yet, `defects export-reviews` said "no usable images in reviews
    (0 problems, e.g. [])"."""
    with pytest.raises(UserError) as refused:
        export_reviews(session, "reviews", CLASSES, tmp_path / "datasets")
    assert str(refused.value).startswith("no reviewed part to export: ")
    assert "e.g. []" not in str(refused.value)
    assert not (tmp_path / "datasets" / "reviews").exists()


def test_a_data_folder_moved_to_another_disk_is_still_whole(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database names images, datasets and weights by the absolute paths they had: after
    the data folder moved (a bigger disk), the backtest and the export of reviews left every
    part out as missing, and evaluation and training said the dataset's files were gone (its
    data.yaml also named the old folder, where ultralytics would read the images)."""
    from typer.testing import CliRunner

    from tests.conftest import import_synthetic
    from training.cli import app
    from training.datasets import dataset_yaml

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "old" / "data"))
    get_settings.cache_clear()
    url = get_settings().resolved_database_url
    migrated(url)
    register_production_detector(url, trained.weights, get_settings().models_dir)
    import_synthetic(url, tmp_path / "src", n=12)
    make_images(tmp_path / "in", n=2, seed=5)
    BatchInspection(url, get_settings().images_dir, "L", "S").run(iter_source(str(tmp_path / "in")))
    with session_scope(url) as session:
        for part_id in session.scalars(select(Inspection.part_id)):
            mark_good(session, part_id, "ana")

    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "data").rename(tmp_path / "new" / "data")
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "new" / "data"))
    get_settings.cache_clear()
    url = get_settings().resolved_database_url
    result = backtest(url, "tiny")
    assert (result.parts, result.unreadable) == (2, 0)
    with session_scope(url) as session:
        report = export_reviews(session, "moved", CLASSES, get_settings().datasets_dir)
        _, data_yaml = dataset_yaml(session, "synth")
    assert report.issues == [] and report.n_images == 2
    assert data_yaml == get_settings().datasets_dir / "synth" / "data.yaml"
    assert yaml.safe_load(data_yaml.read_text())["path"] == str(data_yaml.parent.resolve())
    evaluated = CliRunner().invoke(app, ["evaluate", "tiny", "--data", "synth", "--split", "val"])
    assert evaluated.exit_code == 0, evaluated.output


def test_a_part_image_recorded_elsewhere_is_found_in_this_store_by_its_name(
    tmp_path: Path,
) -> None:
    """Stations sharing a database keep their stores at their own paths (one on Windows)."""
    from inspection.images import located_image

    store = tmp_path / "images"
    (store / "ab").mkdir(parents=True)
    (store / "ab" / "abcd.png").write_bytes(b"the part's bytes")
    for recorded in ("/plant/data/images/ab/abcd.png", r"D:\plant\data\images\ab\abcd.png"):
        assert located_image(recorded, store) == store / "ab" / "abcd.png"
    gone = "/plant/data/images/ab/ef01.png"
    assert located_image(gone, store) == Path(gone)  # named where it was expected


def test_a_backtest_leaves_out_the_reviewed_parts_the_candidate_was_trained_on(
    reviewed: str, trained: Trained, tmp_path: Path
) -> None:
    """A candidate fine-tuned on an export of reviews was backtested on every reviewed part,
    its own training and validation images among them: scored on what it learned, it looked
    better than the production model's recorded verdicts on the same parts. The parts of the
    train and val splits it (or a version it was fine-tuned from) learned on are left out of
    both figures."""
    from db.models import ModelKind
    from tests.synthetic import write_splits, write_voc
    from training.datasets import import_dataset
    from training.versions import register_model_version

    images = write_voc(tmp_path / "voc", n=12)  # (its own files: none of them a reviewed part)
    with session_scope(reviewed) as session:
        import_dataset(
            session,
            "voc",
            tmp_path / "voc",
            "imported",
            tmp_path / "datasets",
            write_splits(tmp_path / "splits", images),
            CLASSES,
        )
        report = export_reviews(session, "week-1", CLASSES, tmp_path / "datasets")
        datasets = {d.name: d for d in session.scalars(select(Dataset))}
        for name, notes in (("retrained", ""), ("again", "fine-tuned from retrained")):
            register_model_version(
                session,
                trained.weights,
                tmp_path / "models",
                kind=ModelKind.DETECTOR,
                architecture="defect-yolo-n",
                class_names=CLASSES,
                image_size=64,
                name=name,
                dataset=datasets["week-1" if name == "retrained" else "imported"],
                notes=notes,
            )
    counts = report.split_counts
    assert counts["train"]["images"] + counts["val"]["images"] == 4  # (a few: none to test)
    with pytest.raises(UserError, match="every reviewed part is in the train or val split"):
        backtest(reviewed, "retrained")
    # A part reviewed after the export: the one a backtest of the retrained model can score.
    make_images(tmp_path / "later", n=1, seed=33)
    BatchInspection(reviewed, tmp_path / "store", "L", "S").run(
        iter_source(str(tmp_path / "later"))
    )
    with session_scope(reviewed) as session:
        mark_good(session, max(session.scalars(select(Inspection.part_id))), "ana")
    for candidate in ("retrained", "again"):  # (its base's training data, learned too)
        result = backtest(reviewed, candidate)
        assert (result.parts, result.learned, result.unreadable) == (1, 4, 0)
        assert result.learned_from == ["week-1"]
        with session_scope(reviewed) as session:
            recorded = recorded_rates(session, leaving_out=result.learned_parts)
        assert (recorded.n_defective, recorded.n_good) == (0, 1)
    assert backtest(reviewed, "tiny").learned == 0  # trained on no export of these reviews


def test_a_backtest_judges_with_the_classifier_its_operating_point_names_by_name(
    reviewed: str, tmp_path: Path
) -> None:
    """The backtest looked the operating point's classifier up as an id or a name, as stations
    once did: a classifier named "1" was taken for version 1, the detector itself, whose
    weights then failed to load as a classifier's."""
    from db.models import ModelKind
    from db.registry import get_model_version
    from inspection.classifier import GOOD, DefectClassifier, save_classifier
    from training.versions import register_model_version

    weights = tmp_path / "verifier.pt"
    save_classifier(DefectClassifier("mobilenet_v3_small", [GOOD, *CLASSES]), weights, 32)
    with session_scope(reviewed) as session:
        register_model_version(
            session,
            weights,
            tmp_path / "models",
            kind=ModelKind.CLASSIFIER,
            architecture="defect-cls-mobilenet_v3_small",
            class_names=[GOOD, *CLASSES],
            image_size=32,
            name="1",
        )
        detector = get_model_version(session, "tiny")
        assert detector.id == 1
        detector.thresholds = {
            **detector.thresholds,
            "classifier": {"version": "1", "part": 0.0, "verify": None},
        }
    result = backtest(reviewed, "tiny")
    assert (result.parts, result.unreadable) == (4, 0)
    assert result.rates.n_missed == 0  # (every part fails at a part threshold of 0)


def test_an_export_of_reviews_keeps_each_parts_name_as_recorded(
    reviewed: str, tmp_path: Path
) -> None:
    """Parts are exported under their content hash (unique), tiles as `<sha256>__x0_y0.png`:
    the camera's file name recorded with each part was lost, and a tile or image of the export
    could not be traced back to it. parts.csv (and tiles.csv's `original_name`) keep it."""
    import csv

    from inspection.tiling import TileSpec

    camera_files = {p.name for p in (tmp_path / "in").iterdir()}
    with session_scope(reviewed) as session:
        whole = export_reviews(session, "whole", CLASSES, tmp_path / "datasets", "off")
        tiled = export_reviews(
            session, "tiled", CLASSES, tmp_path / "datasets", TileSpec.parse("32:0")
        )
    with (whole.root / "parts.csv").open(newline="") as handle:
        parts = list(csv.DictReader(handle))
    assert {row["original_name"] for row in parts} == camera_files
    for row in parts:  # each row names an image of the export, in its split
        assert (whole.root / "images" / row["split"] / row["part"]).is_file()
        assert row["part"] not in camera_files  # (named by content hash, as before)
    with (tiled.root / "tiles.csv").open(newline="") as handle:
        tiles = list(csv.DictReader(handle))
    with (tiled.root / "parts.csv").open(newline="") as handle:
        tiled_parts = {row["part"]: row for row in csv.DictReader(handle)}
    assert {row["original_name"] for row in tiles} == camera_files
    for row in tiles:
        assert tiled_parts[row["part"]]["original_name"] == row["original_name"]
        assert (tiled.root / "images" / row["split"] / row["tile"]).is_file()

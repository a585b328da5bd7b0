"""Distillation on tiny synthetic data: the term is non-zero and falls, the teacher is untouched,
only the student is saved, and the teacher is recorded."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from db.registry import get_model_version
from db.session import session_scope
from inspection.settings import get_settings
from tests.conftest import Trained, register_detector_copy, register_tiny_detector


def _state(path: Path) -> dict[str, torch.Tensor]:
    model = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k: v.clone() for k, v in model.state_dict().items()}


def _distill_request(  # type: ignore[no-untyped-def]
    trained: Trained, student: str, method: str, epochs: int = 2, batch: int = 4
):
    """Distillation on the synthetic set (16 training images), from the session's trained
    teacher; validated once, after the last epoch (no test reads an earlier epoch's)."""
    from training.train_detector import TrainRequest

    return TrainRequest(
        data="synth",
        architecture=student,
        epochs=epochs,
        imgsz=64,
        batch=batch,
        teacher=trained.version_name,
        distill_method=method,  # type: ignore[arg-type]
        # nbs = batch: every batch is an optimizer step (else 16 batches accumulate into one).
        extra=(("warmup_epochs", 0), ("mosaic", 0.0), ("nbs", batch), ("val", False)),
    )


@pytest.mark.parametrize(
    ("method", "wrapper"),
    [("feature", "DistillationModel"), ("cwd", "ChannelWiseDistillationModel")],
)
def test_detector_distillation(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, method: str, wrapper: str
) -> None:
    """ultralytics' feature loss and our channel-wise distillation, through its trainer."""
    from training.train_detector import train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    before = _state(trained.weights)
    distill_terms: list[float] = []
    wrappers: set[str] = set()

    def record(trainer) -> None:  # type: ignore[no-untyped-def]
        distill_terms.append(float(trainer.loss_items["dis_loss"]))
        wrappers.add(type(trainer.model).__name__)

    # One epoch of 8 steps (batches of 2): the term is seen to fall over steps.
    request = _distill_request(trained, "defect-yolo-n-plain", method, epochs=1, batch=2)
    version_id = train_detector(request, url=trained.url, callbacks={"on_train_batch_end": record})
    assert wrappers == {wrapper}
    assert len(distill_terms) >= 6 and all(t > 0 for t in distill_terms)
    assert sum(distill_terms[-3:]) < sum(distill_terms[:3])  # the student moves toward the teacher
    after = _state(trained.weights)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher did not change
    with session_scope(trained.url) as session:
        student = get_model_version(session, version_id)
        assert student.teacher is not None and student.teacher.name == trained.version_name
        assert f"distilled with {method}" in student.notes  # the loss, as well as the teacher
        checkpoint = torch.load(student.file_path, map_location="cpu", weights_only=False)
        assert type(checkpoint["model"]).__name__ == "DetectionModel"  # only the student is saved
        assert student.architecture == "defect-yolo-n-plain"


@pytest.mark.parametrize(("method", "from_teacher"), [("feature", True), ("cwd", False)])
def test_distillation_onto_a_new_class_learns_from_a_teacher_of_the_old_ones(
    trained: Trained,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    method: str,
    from_teacher: bool,
) -> None:
    """`distill detector --teacher P --data NEW [--from P]`, NEW adding a class after P's:
    refused, so retraining on a new defect type could not keep the old ones with P as
    teacher. The distillation is of neck features, weighted by the teacher's scores of its
    own classes: no class score of the student is matched to the teacher's."""
    from tests.conftest import NEW_CLASSES, import_with_new_class
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    import_with_new_class(trained.url, tmp_path, name=f"crack-{method}")
    terms: list[float] = []

    def record(trainer) -> None:  # type: ignore[no-untyped-def]
        terms.append(float(trainer.loss_items["dis_loss"]))

    request = TrainRequest(
        data=f"crack-{method}",
        architecture=None if from_teacher else "defect-yolo-n-plain",
        from_model=trained.version_name if from_teacher else None,
        epochs=1,
        imgsz=64,
        batch=4,
        teacher=trained.version_name,
        distill_method=method,  # type: ignore[arg-type]
        # Four of its training images: one step shows the teacher teaching.
        extra=(("warmup_epochs", 0), ("mosaic", 0.0), ("nbs", 4), ("fraction", 4)),
    )
    version_id = train_detector(request, url=trained.url, callbacks={"on_train_batch_end": record})
    assert terms and all(t > 0 for t in terms)
    with session_scope(trained.url) as session:
        student = get_model_version(session, version_id)
        assert student.classes == NEW_CLASSES
        assert student.teacher is not None and student.teacher.name == trained.version_name
        checkpoint = torch.load(student.file_path, map_location="cpu", weights_only=False)
        assert checkpoint["model"].names == dict(enumerate(NEW_CLASSES))


def test_classifier_distillation(
    trained: Trained, trained_classifier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspection.classifier import load_classifier
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        teacher_path = Path(get_model_version(session, trained_classifier).file_path)
    teacher_before = {
        k: v.clone() for k, v in load_classifier(teacher_path)[0].state_dict().items()
    }
    request = ClassifierTrainRequest(
        data="synth",
        backbone="mobilenet_v3_small",
        epochs=3,
        imgsz=64,
        batch=8,
        device="cpu",
        teacher=trained_classifier,
        lr=3e-3,
    )
    version_id = train_classifier(request, url=trained.url)
    with session_scope(trained.url) as session:
        student = get_model_version(session, version_id)
        per_epoch = student.metrics["distill_loss_per_epoch"]
        assert per_epoch[0] > 0 and per_epoch[-1] < per_epoch[0]
        assert student.teacher is not None and student.teacher.name == trained_classifier
        # How it was taught, as a distilled detector's notes say: `models list --json` shows it.
        assert student.notes == "distilled with soft targets at temperature 4 and FPN features"
    teacher_after = load_classifier(teacher_path)[0].state_dict()
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)


def test_channel_wise_distillation_is_zero_for_equal_maps_and_blind_to_an_offset() -> None:
    from training.distill_cwd import channel_wise_distillation

    teacher = torch.randn(2, 8, 5, 5)
    assert float(channel_wise_distillation(teacher.clone(), teacher)) == pytest.approx(0, abs=1e-6)
    assert float(channel_wise_distillation(teacher + 3.0, teacher)) == pytest.approx(0, abs=1e-5)
    assert float(channel_wise_distillation(torch.randn(2, 8, 5, 5), teacher)) > 0.01


def test_interrupted_cwd_distillation_resumes_as_cwd(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ultralytics rebuilds its own wrapper on resume; ours must come back, projectors kept."""
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = _distill_request(trained, "defect-yolo-n", "cwd")
    # Four of the training images (one step an epoch): what is resumed is the wrapper and its
    # projectors, as trained by the first epoch, not how much it learned.
    request = replace(request, extra=(*request.extra, ("fraction", 4)))
    last: list[Path] = []

    def stop_after_first_epoch(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.epoch == 0:
            last.append(Path(trainer.last))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(
            request, url=trained.url, callbacks={"on_model_save": stop_after_first_epoch}
        )
    saved = torch.load(last[0], map_location="cpu", weights_only=False)["ema"].projector
    resumed: list[tuple[str, dict[str, torch.Tensor]]] = []

    def record(trainer) -> None:  # type: ignore[no-untyped-def]
        if not resumed:
            projector = getattr(trainer.model, "projector", None)
            state = projector.state_dict() if projector is not None else {}
            resumed.append((type(trainer.model).__name__, {k: v.clone() for k, v in state.items()}))

    # As `defects distill detector --teacher T --data D --resume` asks, without --method: the
    # run goes on with the loss it was started with, not the option's default.
    version_id = train_detector(
        TrainRequest(**{**request.__dict__, "resume": True, "distill_method": "feature"}),
        url=trained.url,
        callbacks={"on_train_start": record},
    )
    [(wrapper, projector)] = resumed
    assert wrapper == "ChannelWiseDistillationModel"
    for name, value in saved.state_dict().items():
        assert torch.equal(projector[name].float().cpu(), value.float()), name
    with session_scope(trained.url) as session:
        assert "distilled with cwd" in get_model_version(session, version_id).notes


def test_distill_from_a_version_keeps_its_architecture(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Retraining a model with itself as teacher (`distill detector --teacher P --from P`): the
    student's default, defect-yolo-n, refused any other scale, and the error said to leave out
    --model, an option distill does not have."""
    from typer.testing import CliRunner

    from db.models import ModelKind
    from inspection.detector import build_detector
    from tests.synthetic import CLASSES
    from training.cli import app
    from training.versions import register_model_version

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    weights = tmp_path / "s.pt"
    build_detector("defect-yolo-s", CLASSES).save(str(weights))
    with session_scope(trained.url) as session:
        register_model_version(
            session,
            weights,
            get_settings().models_dir,
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-s",
            class_names=CLASSES,
            image_size=32,
            name="s-scale",
        )
    given = ["distill", "detector", "--teacher", "s-scale", "--from", "s-scale", "--data", "synth"]
    refused = CliRunner().invoke(app, [*given, "--student", "defect-yolo-n"])
    assert "leave --student out" in str(refused.exception)
    result = CliRunner().invoke(app, [*given, "--epochs", "1", "--imgsz", "32", "--batch", "8"])
    assert result.exit_code == 0, result.output
    with session_scope(trained.url) as session:
        from sqlalchemy import select

        from db.models import ModelVersion

        student = session.scalars(
            select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1)
        ).one()
        assert student.architecture == "defect-yolo-s"
        assert student.teacher is not None and student.teacher.name == "s-scale"
        assert "fine-tuned from s-scale" in student.notes


def test_resume_without_student_finds_a_run_of_any_scale(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`distill detector --resume` without --student looked for n-scale runs only (the
    default student's): an interrupted s-scale student was "no interrupted training"."""
    from typer.testing import CliRunner

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    checkpoint = torch.load(trained.weights, map_location="cpu", weights_only=False)
    # Other class names: found, it is refused at once (nothing trains), naming the run.
    checkpoint["model"].names = {0: "dent", 1: "spot"}
    checkpoint.update(epoch=0, optimizer={})  # as if stopped after its first epoch
    run = trained.data_dir / "runs" / "detect" / "synth-defect-yolo-s-20260101-000000"
    (run / "weights").mkdir(parents=True)
    torch.save(checkpoint, run / "weights" / "last.pt")
    lineage = {"teacher": trained.version_name, "method": "feature", "from": None}
    (run / "defects_lineage.json").write_text(json.dumps(lineage))
    command = ["distill", "detector", "--teacher", trained.version_name, "--data", "synth"]
    try:
        result = CliRunner().invoke(app, [*command, "--resume"])
        assert result.exit_code == 1, result.output
        assert str(result.exception).startswith(f"the interrupted run {run.name} knows")
        # --student still narrows the search to its scale.
        result = CliRunner().invoke(app, [*command, "--resume", "--student", "defect-yolo-m"])
        assert "no interrupted training of synth-defect-yolo-m" in str(result.exception)
    finally:
        shutil.rmtree(run)


@pytest.mark.parametrize("damage", ["cut short", "text"])
def test_a_damaged_teacher_is_refused_before_a_job(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A teacher whose weights were cut short, or overwritten with text, was first opened by
    ultralytics' trainer: a traceback (or a line naming no file) and a failed job."""
    from sqlalchemy import func, select
    from typer.testing import CliRunner

    from db.models import TrainingJob
    from inspection.errors import UserError
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    name = f"damaged-{damage.replace(' ', '-')}"
    copy, jobs = register_detector_copy(trained, name)
    whole = copy.read_bytes()
    copy.write_bytes(whole[: len(whole) // 2] if damage == "cut short" else b"not weights\n")
    result = CliRunner().invoke(
        app, ["distill", "detector", "--teacher", name, "--data", "synth", "--epochs", "1"]
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    # One short line, torch's reason in a few words. (It quoted ultralytics' sentence around
    # torch's paragraph of guesses: "ERROR ❌️ ... This is an internal miniz error ...".)
    reason = (
        "PytorchStreamReader failed reading zip archive: failed finding central directory"
        if damage == "cut short"
        else "invalid load key, 'n'"
    )
    assert str(result.exception) == (
        f"teacher {name}: cannot load the model {copy}: not a readable checkpoint, damaged or "
        f"cut short ({reason}); restore its file from a backup, or distill from another version"
    ), str(result.exception)
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs  # refused before


@pytest.mark.parametrize("damage", ["cut short", "text"])
def test_a_damaged_classifier_teacher_is_refused_before_a_job(
    trained: Trained, trained_classifier: str, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A classifier teacher overwritten with text was refused only once its job was recorded,
    in torch's message about `weights_only` (advice to load it unsafely), naming no version;
    one cut short, in a line that carried torch's paragraph of guesses after its error."""
    from sqlalchemy import func, select
    from typer.testing import CliRunner

    from db.models import TrainingJob
    from inspection.errors import UserError
    from tests.conftest import register_classifier_copy
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    name = f"damaged-cls-{damage.replace(' ', '-')}"
    register_classifier_copy(trained.url, trained_classifier, trained.url, name=name)
    with session_scope(trained.url) as session:
        copy = Path(get_model_version(session, name).file_path)
        jobs = session.scalar(select(func.count(TrainingJob.id)))
    whole = copy.read_bytes()
    copy.write_bytes(whole[: len(whole) // 2] if damage == "cut short" else b"not weights\n")
    result = CliRunner().invoke(
        app, ["distill", "classifier", "--teacher", name, "--data", "synth"]
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    message = str(result.exception)
    assert message.startswith(f"teacher {name}: cannot load the classifier {copy}")
    assert "weights_only" not in message
    assert message.endswith("; restore its file from a backup, or distill from another version")
    if damage == "cut short":
        assert message == (
            f"teacher {name}: cannot load the classifier {copy}: not a readable checkpoint, "
            "damaged or cut short (PytorchStreamReader failed reading zip archive: failed "
            "finding central directory); restore its file from a backup, or distill from "
            "another version"
        ), message
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs  # refused before


@pytest.mark.parametrize("resume", [False, True])
def test_an_unknown_student_is_refused_before_a_job(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, resume: bool
) -> None:
    """A mistyped --student was refused once the job was recorded (a failed job standing for a
    typo) or, with --resume, said as "no interrupted training of synth-defect-yolo-x"."""
    from sqlalchemy import func, select
    from typer.testing import CliRunner

    from db.models import TrainingJob
    from inspection.errors import UserError
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        jobs = session.scalar(select(func.count(TrainingJob.id)))
    command = ["distill", "detector", "--teacher", trained.version_name, "--data", "synth"]
    command += ["--student", "defect-yolo-x", "--epochs", "1", *(["--resume"] if resume else [])]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    assert str(result.exception).startswith("unknown detector architecture 'defect-yolo-x'")
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs  # refused before


def test_the_commands_said_to_resume_a_distillation_warn_of_no_option_ignored(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both lines that say how to resume a distillation (after Ctrl-C, and where another
    teacher was named) gave `--method`, which the resumed run takes from its start: the very
    command they said to run warned "--method ignored with --resume"."""
    import re
    import shlex
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from training.cli import app
    from training.train_detector import _resume_hint

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    checkpoint = torch.load(trained.weights, map_location="cpu", weights_only=False)
    # Other class names: found, the run is refused at once (nothing trains), after the warnings.
    checkpoint["model"].names = {0: "dent", 1: "spot"}
    checkpoint.update(epoch=0, optimizer={})  # as if stopped after its first epoch
    run = trained.data_dir / "runs" / "detect" / "synth-defect-yolo-n-20260102-000000"
    (run / "weights").mkdir(parents=True)
    torch.save(checkpoint, run / "weights" / "last.pt")
    lineage = {"teacher": trained.version_name, "method": "cwd", "from": None}
    (run / "defects_lineage.json").write_text(json.dumps(lineage))
    with session_scope(trained.url) as session:
        register_tiny_detector(session, trained.weights, "another-teacher")
    try:
        request = _distill_request(trained, "defect-yolo-n", "cwd")
        stopped = SimpleNamespace(trainer=SimpleNamespace(save_dir=str(run)))
        hint = _resume_hint(request, "defect-yolo-n", stopped)
        other = CliRunner().invoke(
            app,
            ["distill", "detector", "--teacher", "another-teacher", "--data", "synth", "--resume"],
        )
        [said] = re.findall(r"resume it with `(.+?)`", str(other.exception))
        assert said.startswith(f"defects distill detector --teacher {trained.version_name} ")
        said = said.replace(" ... ", " --data synth ")  # (the line leaves the rest to the reader)
        [command] = re.findall(r"resume with `(.+?)`", hint)
        for line in (command, said):
            result = CliRunner().invoke(app, shlex.split(line)[1:])
            assert str(result.exception).startswith(f"the interrupted run {run.name} knows")
            assert "ignored" not in result.output, (line, result.output)
    finally:
        shutil.rmtree(run)


def test_a_classifier_teacher_of_other_classes_is_refused_naming_both_lists(
    trained: Trained, trained_classifier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier teacher of other classes was refused as "the teacher classifier knows
    other classes than 'synth'", naming neither list (a detector's refusal names both)."""
    from sqlalchemy import func, select
    from typer.testing import CliRunner

    from db.models import TrainingJob
    from inspection.classifier import GOOD
    from inspection.errors import UserError
    from tests.conftest import register_classifier_copy
    from tests.synthetic import CLASSES
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    register_classifier_copy(trained.url, trained_classifier, trained.url, name="other-cls")
    with session_scope(trained.url) as session:
        get_model_version(session, "other-cls").classes = [GOOD, *reversed(CLASSES)]
        jobs = session.scalar(select(func.count(TrainingJob.id)))
    result = CliRunner().invoke(
        app, ["distill", "classifier", "--teacher", "other-cls", "--data", "synth"]
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    said = str(result.exception)
    assert said.startswith(
        f"teacher other-cls knows {[GOOD, *reversed(CLASSES)]}, 'synth' labels {[GOOD, *CLASSES]}"
    ), said
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs  # refused before


def test_a_run_of_a_teacher_given_by_id_resumes_by_its_name(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Models page gives its teacher by id: the run's lineage said "learns from 1", and
    `distill detector --teacher NAME --resume` was refused, told to give `--teacher 1`."""
    from sqlalchemy import select

    from db.models import TrainingJob
    from inspection.errors import Stopped, UserError
    from training.train_detector import LINEAGE_FILE, TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        teacher_id = get_model_version(session, trained.version_name).id
    request = _distill_request(trained, "defect-yolo-n", "feature")
    lineages: list[dict[str, object]] = []

    def stop_once_started(trainer) -> None:  # type: ignore[no-untyped-def]
        lineages.append(json.loads((Path(trainer.save_dir) / LINEAGE_FILE).read_text()))
        raise KeyboardInterrupt

    with pytest.raises(Stopped):
        train_detector(
            TrainRequest(**{**request.__dict__, "teacher": str(teacher_id)}),
            url=trained.url,
            callbacks={"on_pretrain_routine_end": stop_once_started},
        )
    assert lineages[0]["teacher"] == trained.version_name
    with session_scope(trained.url) as session:
        job = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(1)).one()
        assert job.params["teacher"] == trained.version_name  # (the page's job said "1")

    # A run the page started before its lineage named the teacher: found by the name too.
    checkpoint = torch.load(trained.weights, map_location="cpu", weights_only=False)
    checkpoint["model"].names = {0: "dent", 1: "spot"}  # found, it is refused at once
    checkpoint.update(epoch=0, optimizer={})  # as if stopped after its first epoch
    run = trained.data_dir / "runs" / "detect" / "synth-defect-yolo-n-20260102-000000"
    (run / "weights").mkdir(parents=True)
    torch.save(checkpoint, run / "weights" / "last.pt")
    lineage = {"teacher": str(teacher_id), "method": "feature", "from": None, "data": "synth"}
    (run / LINEAGE_FILE).write_text(json.dumps(lineage))
    try:
        with pytest.raises(UserError, match=f"the interrupted run {run.name} knows"):
            train_detector(TrainRequest(**{**request.__dict__, "resume": True}), url=trained.url)
    finally:
        shutil.rmtree(run)


def test_a_teacher_given_by_id_is_named_in_the_registered_line(
    trained: Trained, trained_classifier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--teacher` takes an id, as the Models page gives it: the command's last line said
    "distilled from 1"."""
    from typer.testing import CliRunner

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        teacher_id = get_model_version(session, trained_classifier).id
    result = CliRunner().invoke(
        app,
        ["distill", "classifier", "--teacher", str(teacher_id), "--data", "synth"]
        + ["--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f", distilled from {trained_classifier}")


def test_a_resume_given_from_keeps_the_lineage_its_run_started_with(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--from` beside `--resume` only picks the scale: the run goes on from its own checkpoint,
    yet a student distilled from scratch was registered "fine-tuned from" the version named."""
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = _distill_request(trained, "defect-yolo-n", "feature")

    def stop_after_first_epoch(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(
            request, url=trained.url, callbacks={"on_model_save": stop_after_first_epoch}
        )
    resumed = {**request.__dict__, "resume": True, "from_model": trained.version_name}
    version_id = train_detector(TrainRequest(**resumed), url=trained.url)
    with session_scope(trained.url) as session:
        assert get_model_version(session, version_id).notes == "distilled with feature"

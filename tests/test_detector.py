"""The detector end to end on tiny synthetic data: build, train one epoch, reload, evaluate, export."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from db.registry import get_model_version
from db.session import session_scope
from inspection.attention import ChannelSpatialAttention, GatedChannelSpatialAttention
from inspection.detector import architectures, build_detector, resolve_architecture
from inspection.errors import UserError
from inspection.settings import get_settings
from tests.conftest import NEW_CLASSES, Trained, register_detector_copy
from tests.synthetic import CLASSES
from training.evaluate import part_rates

ROOT = Path(__file__).parents[1]


def test_every_architecture_builds_and_attention_is_where_it_should_be() -> None:
    for name in architectures():
        model = build_detector(name, CLASSES).model
        attention = [m for m in model.modules() if isinstance(m, ChannelSpatialAttention)]
        assert len(attention) == (0 if name.endswith("-plain") else 3), name
        gated = [m for m in attention if isinstance(m, GatedChannelSpatialAttention)]
        assert len(gated) == (3 if name.endswith("-gated") else 0), name
        out = model.eval()(torch.zeros(1, 3, 64, 64))
        assert out[0].shape[:2] == (1, 4 + len(CLASSES))


def test_gated_attention_starts_as_the_identity_and_the_plain_gates_quarter() -> None:
    features = torch.randn(2, 8, 6, 6)
    for layer, factor in ((GatedChannelSpatialAttention(), 1.0), (ChannelSpatialAttention(), 0.25)):
        for conv in (layer.channel_conv, layer.spatial_conv):
            torch.nn.init.zeros_(conv.weight)  # logits 0: every gate at sigmoid(0) = 0.5
        assert torch.allclose(layer(features), features * factor)


def test_scales_differ_in_width_and_depth(tmp_path: Path) -> None:
    sizes = {
        s: sum(p.numel() for p in build_detector(f"defect-yolo-{s}", CLASSES).model.parameters())
        for s in "nsm"
    }
    assert sizes["n"] < sizes["s"] < sizes["m"]
    text = resolve_architecture("defect-yolo-s", CLASSES, tmp_path).read_text()
    assert "width_multiple: 0.5" in text and "scales" not in text


def test_unknown_architecture_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown detector architecture"):
        build_detector("yolov99", CLASSES)


def test_training_registers_a_candidate_with_metrics(trained: Trained) -> None:
    with session_scope(trained.url) as session:
        version = get_model_version(session, trained.version_name)
        assert version.stage.value == "candidate"
        assert version.classes == CLASSES
        assert version.sha256 and len(version.sha256) == 64
        assert "val_map50" in version.metrics
        assert version.metrics["device"] == "cpu"  # where it ran, for the benches' result tables
        assert version.thresholds["per_class"] == dict.fromkeys(CLASSES, 0.25)
    assert trained.weights.is_file()


def test_checkpoint_reloads_in_a_fresh_process_with_no_extra_step(trained: Trained) -> None:
    code = (
        "from ultralytics import YOLO; import sys; m = YOLO(sys.argv[1]); "
        "print(type(m.model).__name__, sorted(m.names.values()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(trained.weights)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "DEFECTS_DATA_DIR": str(trained.data_dir)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DetectionModel ['scratch', 'spot']" in done.stdout


def test_part_rates_arithmetic_by_hand() -> None:
    # 5 defective parts, 2 of them not flagged; 4 good parts, 1 flagged.
    outcomes = [(True, True)] * 3 + [(True, False)] * 2 + [(False, False)] * 3 + [(False, True)]
    rates = part_rates(outcomes)
    assert (rates.n_defective, rates.n_missed, rates.n_good, rates.n_false_calls) == (5, 2, 4, 1)
    assert rates.miss_rate == pytest.approx(0.4)
    assert rates.false_call_rate == pytest.approx(0.25)
    assert part_rates([(True, True)]).false_call_rate is None


def test_recall_matching_by_hand() -> None:
    """Per-class recall counts a labeled box found by one detection of its class at IoU >= 0.5,
    each detection finding at most one box, the most confident first.

    Class 0 boxes A (0,0,10,10) and B (20,0,30,10), class 1 box C (0,20,10,30). Detections:
    0.9 class 0 on A (IoU 1: A found); 0.8 class 0 at (1,0,11,10), IoU 90/110 with A, found
    already, and 0 with B: finds nothing; 0.7 class 1 on A: another class, nothing; 0.6 class
    0 at (20,0,30,20): IoU 100/200 = 0.5 with B, exactly the bound: B found. C is not found.
    Recall: class 0 2 of 2, class 1 0 of 1."""
    import numpy as np

    from training.evaluate import matched_boxes

    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]], dtype=float)
    pred = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 0, 30, 20]], float)
    found = matched_boxes(
        truth, np.array([0, 0, 1]), pred, np.array([0, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6])
    )
    assert found.tolist() == [True, True, False]


def test_evaluate_cli_writes_the_stable_json_keys(
    trained: Trained, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            trained.version_name,
            "--data",
            "synth",
            "--split",
            "test",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    for key in (
        "map50",
        "map50_95",
        "miss_rate",
        "false_call_rate",
        "n_defective",
        "n_good",
        "per_class",
    ):
        assert key in payload
    # The test split (every 6th image from the 5th) holds parts 4, 10, 16, 22: 4 and 16 are good.
    assert (payload["n_defective"], payload["n_good"]) == (2, 2)
    assert set(payload["per_class"]) == set(CLASSES)
    with session_scope(trained.url) as session:
        assert (
            "synth:test" in get_model_version(session, trained.version_name).metrics["evaluations"]
        )


def test_an_exported_detector_is_evaluated_like_its_checkpoint(trained: Trained) -> None:
    from training.evaluate import evaluate_detector
    from training.export import export_detector

    onnx_path = export_detector(trained.weights, dynamic=True)
    # A one-epoch model is barely confident: a threshold its outputs reach, so that parts are
    # flagged and the counts compared are not zero on both sides.
    thresholds = {"default": 0.0001}
    figures = [
        evaluate_detector(path, "synth", "test", thresholds=thresholds, url=trained.url).to_json()
        for path in (trained.weights, onnx_path)
    ]
    flagged = figures[0]["n_defective"] - figures[0]["n_missed"] + figures[0]["n_false_calls"]
    assert flagged > 0
    assert figures[1]["map50"] == pytest.approx(figures[0]["map50"], abs=0.01)
    for key in ("n_defective", "n_good", "n_missed", "n_false_calls"):
        assert figures[1][key] == figures[0][key], key
    assert figures[1]["weights"] == onnx_path.name


def test_an_export_loads_the_checkpoint_once_and_names_its_classes(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`defects export` loaded the checkpoint twice (once for its classes, once to export)."""
    from training import export
    from training.export import METADATA_PREFIX, export_detector, read_metadata

    loaded: list[Path] = []
    load = export.load_detector

    def counted(weights: Path):  # type: ignore[no-untyped-def]
        loaded.append(weights)
        return load(weights)

    monkeypatch.setattr(export, "load_detector", counted)
    weights = Path(shutil.copy(trained.weights, tmp_path / "best.pt"))
    onnx_path = export_detector(weights, version_name="v1")
    assert len(loaded) == 1
    meta = read_metadata(onnx_path)
    assert json.loads(meta[METADATA_PREFIX + "classes"]) == CLASSES
    assert meta[METADATA_PREFIX + "imgsz"] == "64"
    assert meta[METADATA_PREFIX + "architecture"] == "defect-yolo-n"
    assert meta[METADATA_PREFIX + "model_version"] == "v1"


def test_a_model_file_is_evaluated_at_its_own_thresholds(trained: Trained, tmp_path: Path) -> None:
    """`defects evaluate FILE` measured an export at default thresholds, not at those in its
    metadata, so its miss rate was not the model's (30 of 180 against 1 of 180)."""
    from training.evaluate import resolve_model
    from training.export import export_detector

    operating_point = {"default": 0.0123, "per_class": {CLASSES[0]: 0.0456}}
    weights = Path(shutil.copy(trained.weights, tmp_path / "exported.pt"))
    onnx_path = export_detector(weights, thresholds=operating_point)
    assert resolve_model(str(onnx_path), trained.url)[1] == operating_point
    with session_scope(trained.url) as session:  # the registered version's own weights
        version = get_model_version(session, trained.version_name)
        file_path, stored = version.file_path, dict(version.thresholds)
    assert resolve_model(file_path, trained.url)[1] == stored
    (tmp_path / "unknown.pt").write_bytes(Path(file_path).read_bytes() + b"x")
    assert resolve_model(str(tmp_path / "unknown.pt"), trained.url)[1] is None


def test_an_export_of_a_version_is_evaluated_at_its_current_thresholds(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An .onnx was measured at the thresholds in its metadata, stale after a recalibration:
    the version, its .pt and its .onnx gave three different miss and false-call figures."""
    from typer.testing import CliRunner

    from training.cli import app
    from training.evaluate import resolve_model
    from training.export import export_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        current = dict(get_model_version(session, trained.version_name).thresholds)
    stale = {"default": 0.0123, "per_class": {CLASSES[0]: 0.0456}, "iou": 0.45}
    # A station's copy, its metadata naming the version.
    station = export_detector(
        Path(shutil.copy(trained.weights, tmp_path / "station.pt")),
        thresholds=stale,
        version_name=trained.version_name,
    )
    assert resolve_model(str(station), trained.url)[1] == current
    note = resolve_model(str(station), trained.url).note
    assert note is not None and "export is stale" in note
    # Exported beside the version's weights with no name in its metadata: known by its folder.
    beside = export_detector(trained.weights, imgsz=96, thresholds=stale)
    try:
        assert resolve_model(str(beside), trained.url)[1] == current
    finally:
        beside.unlink()
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app, ["evaluate", str(station), "--data", "synth", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "export is stale" in " ".join(result.output.split())
    assert json.loads(out.read_text())["thresholds"] == current


def test_a_split_without_labeled_defects_has_no_map_and_leaves_the_headline(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mAP was 0.0 on a split with no labeled box, and any dataset's test figures became the
    version's headline ones."""
    from typer.testing import CliRunner

    from tests.synthetic import write_splits, write_voc
    from training.cli import app
    from training.datasets import import_dataset

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    images = write_voc(tmp_path / "src", n=12, good_every=1)  # good parts only
    with session_scope(trained.url) as session:
        import_dataset(
            session,
            "voc",
            tmp_path / "src",
            "synth-good",
            get_settings().datasets_dir,
            write_splits(tmp_path / "splits", images),
            CLASSES,
        )
        before = dict(get_model_version(session, trained.version_name).metrics)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app,
        ["evaluate", trained.version_name, "--data", "synth-good", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert (payload["map50"], payload["map50_95"], payload["miss_rate"]) == (None, None, None)
    assert "mAP50 -, mAP50-95 -" in result.output
    with session_scope(trained.url) as session:
        after = dict(get_model_version(session, trained.version_name).metrics)
    assert after["evaluations"]["synth-good:test"]["map50"] is None
    headline = ("map50", "map50_95", "miss_rate", "false_call_rate")
    assert {k: after.get(k) for k in headline} == {k: before.get(k) for k in headline}


def test_part_figures_do_not_depend_on_the_batch(trained: Trained) -> None:
    """Parts are predicted one batch of files at a time: every part counted once, whatever the
    batch, including a last batch that is not full."""
    from training.evaluate import evaluate_detector

    thresholds = {"default": 0.0001}
    figures = [
        evaluate_detector(
            trained.weights, "synth", "test", thresholds=thresholds, batch=batch, url=trained.url
        ).to_json()
        for batch in (16, 3)
    ]
    assert figures[0]["n_defective"] + figures[0]["n_good"] > 3  # more than one batch of 3
    for key in ("n_defective", "n_good", "n_missed", "n_false_calls"):
        assert figures[1][key] == figures[0][key], key
    for name, row in figures[0]["per_class"].items():
        assert figures[1]["per_class"][name]["recall"] == row["recall"], name


def test_a_classifier_or_a_broken_onnx_file_is_a_clear_error(
    trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    from training.evaluate import evaluate_detector
    from training.export import export_classifier

    with session_scope(trained.url) as session:
        classifier = Path(get_model_version(session, trained_classifier).file_path)
    with pytest.raises(UserError, match="is a classifier"):
        evaluate_detector(export_classifier(classifier), "synth", url=trained.url)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(UserError, match="cannot read the ONNX model"):
        evaluate_detector(broken, "synth", url=trained.url)


def test_onnx_export_matches_pytorch(trained: Trained) -> None:
    import onnxruntime as ort

    from inspection.detector import load_detector
    from training.export import export_detector, read_metadata

    onnx_path = export_detector(
        trained.weights, thresholds={"per_class": {"scratch": 0.3}}, version_name="v1"
    )
    metadata = read_metadata(onnx_path)
    assert json.loads(metadata["defects.classes"]) == CLASSES
    assert json.loads(metadata["defects.thresholds"])["per_class"]["scratch"] == 0.3
    assert metadata["defects.model_version"] == "v1"

    model = load_detector(trained.weights).model.float().eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(image)[0].numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    [actual] = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-3)


def test_a_half_export_is_made_on_a_cpu_and_agrees_within_float16_rounding(
    trained: Trained,
) -> None:
    """`--half` was refused without a GPU ("needs a GPU to export on"), though ultralytics
    converts to float16 on a CPU: a GPU station's fp16 file can be made on any machine."""
    import onnxruntime as ort

    from training.export import export_detector

    full = export_detector(trained.weights, version_name="v1")
    half = export_detector(trained.weights, half=True, version_name="v1", device="cpu")
    assert half.name.endswith(".fp16.onnx") and half != full
    assert half.stat().st_size < 0.7 * full.stat().st_size
    image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    outputs = []
    for path in (full, half):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(float)"  # (float32 in and out)
        outputs.append(session.run(None, {session.get_inputs()[0].name: image})[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=5e-3, atol=0.05)


def test_weights_stored_as_float16_halve_the_file_within_float16_rounding(
    trained: Trained, tmp_path: Path, export_of_trained: Callable[[Path, str], Path]
) -> None:
    import shutil

    import onnxruntime as ort

    from training.export import read_metadata, store_weights_as_float16

    source = export_of_trained(trained.weights, "v1")
    compact = Path(shutil.copy(source, tmp_path / "compact.onnx"))
    store_weights_as_float16(compact)
    assert compact.stat().st_size < 0.6 * source.stat().st_size
    assert read_metadata(compact)["defects.model_version"] == "v1"
    assert read_metadata(compact)["defects.weights_stored_as"] == "float16"
    image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    outputs = []
    for path in (source, compact):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(float)"
        outputs.append(session.run(None, {session.get_inputs()[0].name: image})[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=5e-3, atol=0.05)
    size = compact.stat().st_size
    store_weights_as_float16(compact)  # a second pass finds nothing to halve
    assert compact.stat().st_size == size


def test_export_cli_compact(trained: Trained, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from training.cli import app
    from training.export import read_metadata

    weights = Path(shutil.copy(trained.weights, tmp_path / "station.pt"))
    result = CliRunner().invoke(app, ["export", str(weights), "--compact", "--dynamic"])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "station.onnx")["defects.weights_stored_as"] == "float16"


def test_the_job_log_has_one_line_per_epoch_trained(trained: Trained) -> None:
    """ultralytics' final validation also fires on_fit_epoch_end: the log ended "epoch 2/1"."""
    from sqlalchemy import select

    from db.models import TrainingJob

    with session_scope(trained.url) as session:
        version = get_model_version(session, trained.version_name)
        job = session.scalars(
            select(TrainingJob).where(TrainingJob.result_model_version_id == version.id)
        ).one()
        lines = job.log.splitlines()
    assert [line.split(" mAP50")[0] for line in lines] == ["epoch 1/1"]


def test_resume_refuses_a_run_of_other_classes(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run resumed after its dataset was imported again with other classes was registered
    under the new names, though its first epochs learned other indices."""
    from sqlalchemy import func, select

    from db.models import TrainingJob
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    checkpoint = torch.load(trained.weights, map_location="cpu", weights_only=False)
    checkpoint["model"].names = {0: "dent", 1: "spot"}
    checkpoint.update(epoch=0, optimizer={})  # as if stopped after its first epoch
    run = trained.data_dir / "runs" / "detect" / "before-reimport"
    (run / "weights").mkdir(parents=True)
    torch.save(checkpoint, run / "weights" / "last.pt")
    with session_scope(trained.url) as session:
        jobs = session.scalar(select(func.count()).select_from(TrainingJob))
    try:
        with pytest.raises(
            UserError, match=r"knows \['dent', 'spot'\], 'synth' labels \['scratch', 'spot'\]"
        ):
            train_detector(
                TrainRequest(data="synth", resume=True, name="before-reimport"), url=trained.url
            )
    finally:
        shutil.rmtree(run)
    with session_scope(trained.url) as session:  # refused before a job was recorded
        assert session.scalar(select(func.count()).select_from(TrainingJob)) == jobs


def test_interrupted_training_resumes(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    from sqlalchemy import select

    from db.models import JobStatus, TrainingJob
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = TrainRequest(
        data="synth", architecture="defect-yolo-n-plain", epochs=2, imgsz=64, batch=4
    )

    def stop_after_first_epoch(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.epoch == 0:
            raise KeyboardInterrupt  # the operator presses Ctrl-C

    runs = trained.data_dir / "runs" / "detect"
    pattern = "synth-defect-yolo-n-plain-*/defects_lineage.json"
    # (Runs of other tests on the shared data, distillations of the same student among them.)
    before = set(runs.glob(pattern))
    with pytest.raises(KeyboardInterrupt):
        train_detector(
            request, url=trained.url, callbacks={"on_model_save": stop_after_first_epoch}
        )
    # The run said, as it started, that it learns from no teacher (for its resume).
    [lineage] = set(runs.glob(pattern)) - before
    stopped_job = json.loads(lineage.read_text()).pop("job")  # (its resume's job names it)
    assert json.loads(lineage.read_text()) == {
        "teacher": None,
        "method": None,
        "from": None,
        "data": "synth",
        "job": stopped_job,
    }
    # The stop says how to go on (it said nothing); the run is resumed as it says.
    hint = re.search(
        r"resume with `defects train detector --data synth --resume --name (\S+)`",
        capsys.readouterr().err,
    )
    assert hint is not None and hint[1] == lineage.parent.name
    version_id = train_detector(
        TrainRequest(**{**request.__dict__, "resume": True, "name": hint[1]}), url=trained.url
    )
    with session_scope(trained.url) as session:
        jobs = session.scalars(select(TrainingJob).order_by(TrainingJob.id)).all()[-2:]
        assert [j.status for j in jobs] == [JobStatus.CANCELLED, JobStatus.SUCCEEDED]
        # (Its process by boot and start ticks, which no clock step moves: see job_alive.)
        assert all(j.process_start for j in jobs) or not Path("/proc/self/stat").exists()
        assert jobs[1].log.splitlines()[-1].startswith("epoch 2/2 ")  # (not "epoch 3/2")
        assert get_model_version(session, version_id).metrics["epochs"] == 2
        registered = get_model_version(session, version_id).name
        resumed_ids = [j.id for j in jobs]
    assert resumed_ids[0] == stopped_job
    # The stopped job said "cancelled" with no word of the job that went on with its run.
    from training.jobs import recent_jobs

    listed = {job["id"]: job for job in recent_jobs(trained.url)}
    assert listed[resumed_ids[0]]["resumed_as"] == resumed_ids[1]
    assert listed[resumed_ids[1]]["resumes"] == resumed_ids[0]
    # Registered, the run keeps its history, not its weights (best.pt was the version's copy,
    # the same bytes twice); its lineage names the version it became.
    run = lineage.parent
    assert (run / "results.csv").is_file() and not (run / "weights").exists()
    assert json.loads(lineage.read_text())["registered"] == registered
    # Finished now: nothing to resume, said in one line (ultralytics, asked to resume a
    # finished run, fell back to its own example dataset and tried to download it).
    with pytest.raises(UserError, match="no interrupted training .* finished"):
        train_detector(TrainRequest(**{**request.__dict__, "resume": True}), url=trained.url)


def test_a_training_stopped_before_its_first_checkpoint_leaves_no_run_folder(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped before its first checkpoint, a run left a folder of its arguments and an empty
    weights/ that nothing could resume: the same --name next made NAME2, and that stop's
    resume hint named NAME2."""
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()

    def stop_before_the_first_epoch(trainer) -> None:  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    run = trained.data_dir / "runs" / "detect" / "stopped-early"
    request = TrainRequest(
        data="synth",
        architecture="defect-yolo-n-plain",
        epochs=1,
        imgsz=64,
        batch=4,
        name="stopped-early",
    )
    for _ in range(2):  # (the second, of the same name, in the same folder)
        with pytest.raises(KeyboardInterrupt):
            train_detector(
                request,
                url=trained.url,
                callbacks={"on_pretrain_routine_end": stop_before_the_first_epoch},
            )
        said = capsys.readouterr().err
        assert "nothing to resume (its run folder stopped-early is removed)" in said
        assert not run.exists()


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ("on_pretrain_routine_start", RuntimeError("reading the dataset failed")),  # (set-up)
        ("on_pretrain_routine_end", RuntimeError("out of memory")),
        ("on_pretrain_routine_end", OSError(errno.ENOSPC, "No space left on device")),
    ],
)
def test_a_training_that_fails_before_its_first_checkpoint_leaves_no_run_folder(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, event: str, error: Exception
) -> None:
    """A run that failed (not stopped) before its first checkpoint kept its folder of
    arguments and an empty weights/, as a stopped one no longer did: the same --name next made
    NAME2. It is removed as a stopped one's is, and the job is marked failed."""
    from sqlalchemy import select

    from db.models import JobStatus, TrainingJob
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()

    def fail(trainer) -> None:  # type: ignore[no-untyped-def]
        raise error

    runs = trained.data_dir / "runs" / "detect"
    request = TrainRequest(
        data="synth",
        architecture="defect-yolo-n-plain",
        epochs=1,
        imgsz=64,
        batch=4,
        name="failed-early",
    )
    with pytest.raises((RuntimeError, UserError)) as raised:
        train_detector(request, url=trained.url, callbacks={event: fail})
    if isinstance(error, OSError):  # (a full disk is said in one line, with what was kept)
        assert "the folder, with no checkpoint yet, is removed" in str(raised.value)
    assert not list(runs.glob("failed-early*"))
    with session_scope(trained.url) as session:
        job = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert job is not None and job.status == JobStatus.FAILED


def test_a_stopped_training_says_so_once_and_exits_130_as_a_stopped_batch_does(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped (Ctrl-C; SIGTERM, which the command line raises as one), `defects train
    detector` said how to go on and then "interrupted" as well: a batch says its own "stopped"
    line alone."""
    import signal

    from training import cli, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    monkeypatch.setenv("DEFECTS_DEVICE", "cpu")
    get_settings.cache_clear()

    def stopped(trainer) -> None:  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # (where the signal lands: as the first epoch starts)

    monkeypatch.setattr(train_detector, "_use_every_cpu_core", stopped)
    ended: list[int | str | None] = []
    monkeypatch.setattr(cli, "end_process", ended.append)  # (it ends the process at once)
    command = ["defects", "train", "detector", "--data", "synth", "--model", "defect-yolo-n"]
    monkeypatch.setattr(sys, "argv", [*command, "--epochs", "1", "--imgsz", "64", "--batch", "4"])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler)  # (main installs its own: this is pytest's)
        get_settings.cache_clear()
    assert ended == [130]
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1].startswith("stopped before its first checkpoint: there is nothing to resume")
    assert "interrupted" not in said


def test_a_training_interrupted_before_the_data_folder_moved_resumes_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint names the dataset and the run's folder as they were when the run began:
    after the data folder moved, a resume read the images from, and wrote its epochs to, the
    old folder, or failed there."""
    from tests.conftest import import_synthetic, migrated
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "old" / "data"))
    get_settings.cache_clear()
    migrated(get_settings().resolved_database_url)
    import_synthetic(get_settings().resolved_database_url, tmp_path / "src", n=12)
    request = TrainRequest(
        data="synth", architecture="defect-yolo-n-plain", epochs=2, imgsz=64, batch=4
    )

    def stop_after_first_epoch(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(request, callbacks={"on_model_save": stop_after_first_epoch})
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "data").rename(tmp_path / "new" / "data")
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "new" / "data"))
    get_settings.cache_clear()
    version_id = train_detector(TrainRequest(**{**request.__dict__, "resume": True}))
    assert not (tmp_path / "old" / "data").exists()  # nothing written where it was
    with session_scope(get_settings().resolved_database_url) as session:
        version = get_model_version(session, version_id)
        assert version.metrics["epochs"] == 2
        assert Path(version.file_path).is_relative_to(tmp_path / "new")


def test_a_time_budget_replans_the_epochs(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU lent for minutes: training must end inside the budget, not after --epochs."""
    from sqlalchemy import select

    from db.models import JobStatus, TrainingJob
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = TrainRequest(
        data="synth", architecture="defect-yolo-n-plain", epochs=500, imgsz=64, batch=4, hours=0.001
    )
    version_id = train_detector(request, url=trained.url)
    with session_scope(trained.url) as session:
        trained_epochs = get_model_version(session, version_id).metrics["epochs"]
        job = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert job is not None and job.status == JobStatus.SUCCEEDED and job.progress == 1.0
    assert 1 <= trained_epochs < 500


def test_results_csv_is_read_the_same_without_polars(tmp_path: Path) -> None:
    """GPU images often lack polars; checkpoints must still be saved with the training history."""
    import polars as pl

    from training.train_detector import read_results_csv_without_polars

    csv_file = tmp_path / "results.csv"
    csv_file.write_text(
        "epoch,time,train/box_loss,metrics/mAP50(B),lr/pg0\n"
        "1,5.2,4.226,0.0012,0.00333\n"
        "2,9.8,3.9,0.051,0.0065\n"
    )
    trainer = SimpleNamespace(csv=csv_file)
    expected = pl.read_csv(csv_file.read_bytes(), infer_schema_length=None).to_dict(as_series=False)
    assert read_results_csv_without_polars(trainer) == expected
    assert read_results_csv_without_polars(SimpleNamespace(csv=tmp_path / "missing.csv")) == {}


def test_fine_tuning_refuses_another_architecture(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--model beside --from was dropped without a word and the base's architecture trained."""
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = TrainRequest(
        data="synth",
        architecture="defect-yolo-n-gated",
        from_model=trained.version_name,
        epochs=1,
        imgsz=64,
    )
    with pytest.raises(UserError, match="fine-tunes its own architecture, defect-yolo-n"):
        train_detector(request, url=trained.url)


def test_calibrating_on_good_parts_alone_stores_nothing(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A split with no defective part once stored every class off (1.01): nothing could fail
    a part any more, at once on a production model's stations."""
    from training import calibrate
    from training.calibrate import ScoredDetection, ScoredPart

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    good = [ScoredPart(False, (ScoredDetection(CLASSES[0], 0.3, None, False),))] * 5
    monkeypatch.setattr(calibrate, "score_parts", lambda *args, **kwargs: good)
    with session_scope(trained.url) as session:
        before = dict(get_model_version(session, trained.version_name).thresholds)
    with pytest.raises(
        UserError, match="no defective part the detector finds .*nothing was stored"
    ):
        calibrate.calibrate_model(trained.url, trained.version_name, "synth", "val", 0.005)
    with session_scope(trained.url) as session:
        assert get_model_version(session, trained.version_name).thresholds == before


def test_a_fine_tuning_resumed_by_resume_alone_keeps_its_base_in_the_notes(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`defects train detector --data D --resume` looked only for the default architecture's
    runs (an interrupted n-scale run was "not there"), and a resumed fine-tuning, with no
    --from, registered a version whose notes no longer said what it was fine-tuned from."""
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()

    def stop_after_first_epoch(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(
            TrainRequest(
                data="synth", from_model=trained.version_name, epochs=2, imgsz=64, batch=4
            ),
            url=trained.url,
            callbacks={"on_model_save": stop_after_first_epoch},
        )
    version_id = train_detector(
        TrainRequest(data="synth", resume=True, epochs=2, imgsz=64, batch=4), url=trained.url
    )
    with session_scope(trained.url) as session:
        version = get_model_version(session, version_id)
        assert version.architecture == "defect-yolo-n"
        assert f"fine-tuned from {trained.version_name}" in version.notes


def test_resume_takes_the_newest_interrupted_run_of_its_own_architecture(tmp_path: Path) -> None:
    """defect-yolo-n's resume took defect-yolo-n-plain's run (PREFIX-* matched it), and a
    finished run hid an interrupted one before it."""
    import os
    import time as clock

    from training.train_detector import _latest_run

    def run(name: str, interrupted: bool, age: int) -> Path:
        last = tmp_path / name / "weights" / "last.pt"
        last.parent.mkdir(parents=True)
        torch.save(
            {"epoch": 3 if interrupted else -1, "optimizer": {} if interrupted else None}, last
        )
        os.utime(tmp_path / name, (clock.time() - age, clock.time() - age))
        return tmp_path / name

    wanted = run("d-defect-yolo-n-20261126-100000", True, 300)
    run("d-defect-yolo-n-20261126-110000", False, 200)  # newer, finished
    run("d-defect-yolo-n-plain-20261126-120000", True, 100)  # newer, another architecture
    named = run("myrun", True, 50)
    assert _latest_run(tmp_path, ["d-defect-yolo-n"]) == wanted
    assert _latest_run(tmp_path, ["d-defect-yolo-n"], name="myrun") == named
    # A name is the whole folder's: a newer interrupted myrun12 was taken for myrun's.
    run("myrun12", True, 40)
    assert _latest_run(tmp_path, ["d-defect-yolo-n"], name="myrun") == named
    with pytest.raises(UserError, match="no interrupted training of d-defect-yolo-s"):
        _latest_run(tmp_path, ["d-defect-yolo-s"])
    # `--resume` with no architecture looks at every one's runs (it looked at the default's).
    assert _latest_run(tmp_path, ["d-defect-yolo-s", "d-defect-yolo-n"]) == wanted
    # A distillation is resumed as one, from its teacher; a plain run is not taken for one.
    distilled = run("d-defect-yolo-n-20261126-130000", True, 10)
    (distilled / "defects_lineage.json").write_text(json.dumps({"teacher": "T", "method": "cwd"}))
    assert _latest_run(tmp_path, ["d-defect-yolo-n"]) == wanted
    assert _latest_run(tmp_path, ["d-defect-yolo-n"], teacher="T") == distilled
    (wanted / "defects_lineage.json").write_text(json.dumps({"teacher": None, "method": None}))
    with pytest.raises(UserError, match="run d-defect-yolo-n-20261126-100000 has no teacher"):
        _latest_run(tmp_path, ["d-defect-yolo-n"], teacher="U")
    (wanted / "weights" / "last.pt").unlink()
    with pytest.raises(UserError, match="learns from T: resume it with `defects distill detector "):
        _latest_run(tmp_path, ["d-defect-yolo-n"])


def test_resume_tells_a_registered_run_without_weights_from_an_interrupted_one(
    tmp_path: Path,
) -> None:
    """A registered run keeps no weights (its lineage names its version instead of last.pt
    marking it finished): it is not taken for a run to resume, and named as the latest,
    finished, where nothing is to resume."""
    import os
    import time as clock

    from training.train_detector import _keep_history_only, _latest_run

    def run(name: str, epoch: int, age: int) -> Path:
        last = tmp_path / name / "weights" / "last.pt"
        last.parent.mkdir(parents=True)
        torch.save({"epoch": epoch, "optimizer": {} if epoch >= 0 else None}, last)
        (last.parent / "best.pt").write_bytes(b"weights")
        (tmp_path / name / "defects_lineage.json").write_text(json.dumps({"teacher": None}))
        os.utime(tmp_path / name, (clock.time() - age, clock.time() - age))
        return tmp_path / name

    interrupted = run("d-defect-yolo-n-20261126-100000", 3, 300)
    finished = run("d-defect-yolo-n-20261126-110000", -1, 200)
    (finished / "results.csv").write_text("epoch,loss\n1,0.5\n")
    _keep_history_only(finished, "d-v1")
    assert sorted(p.name for p in finished.iterdir()) == ["defects_lineage.json", "results.csv"]
    assert _latest_run(tmp_path, ["d-defect-yolo-n"]) == interrupted
    with pytest.raises(UserError, match=r"to resume in .* \(the latest, .*-110000, finished\)"):
        _latest_run(tmp_path, ["d-defect-yolo-n"], name=finished.name)
    _keep_history_only(interrupted, "d-v2")  # (as if resumed to its end and registered)
    with pytest.raises(UserError, match=r"to resume in .* \(the latest, .*-100000, finished\)"):
        _latest_run(tmp_path, ["d-defect-yolo-n"])


def test_resume_alone_finds_a_run_numbered_for_a_name_taken(tmp_path: Path) -> None:
    """Two trainings started in the same second: ultralytics names the second run's folder
    PREFIX-YYYYMMDD-HHMMSS-2, which `--resume` alone did not look at ("no interrupted
    training")."""
    from training.train_detector import _latest_run

    for name in ("d-defect-yolo-n-20261126-100000", "d-defect-yolo-n-20261126-100000-2"):
        last = tmp_path / name / "weights" / "last.pt"
        last.parent.mkdir(parents=True)
        finished = not name.endswith("-2")
        torch.save({"epoch": -1 if finished else 3, "optimizer": None if finished else {}}, last)
    assert _latest_run(tmp_path, ["d-defect-yolo-n"]).name == "d-defect-yolo-n-20261126-100000-2"


def test_an_export_for_another_size_leaves_the_stations_onnx_file_alone(
    trained: Trained, tmp_path: Path
) -> None:
    """The engine runs `<weights>.onnx` on a CPU, at the size in its metadata: an export at
    another size overwrote it, and the stations judged at that size, not the calibrated one."""
    from inspection.detector import load_detector
    from training.export import export_detector, onnx_target, read_metadata

    weights = Path(shutil.copy(trained.weights, tmp_path / "station.pt"))
    trained_size = int(load_detector(weights).ckpt["train_args"]["imgsz"])
    station = export_detector(weights)
    assert station == tmp_path / "station.onnx"
    before = station.read_bytes()
    other = export_detector(weights, imgsz=trained_size * 2)
    assert other == tmp_path / f"station.{trained_size * 2}.onnx"
    assert read_metadata(other)["defects.imgsz"] == str(trained_size * 2)
    assert station.read_bytes() == before
    assert onnx_target(weights, 64, 64, half=True).name == "station.fp16.onnx"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_evaluate_follows_the_device_setting(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evaluate` ran on the CPU whatever DEFECTS_DEVICE said (a GPU machine's test split,
    slowly); it follows the setting now, as inspect and train do."""
    from typer.testing import CliRunner

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    monkeypatch.setenv("DEFECTS_DEVICE", "cuda")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["evaluate", trained.version_name, "--data", "synth"])
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0
        assert "no CUDA GPU is visible: set DEFECTS_DEVICE=cpu" in str(result.exception)
    ran = CliRunner().invoke(
        app, ["evaluate", trained.version_name, "--data", "synth", "--device", "cpu"]
    )
    assert ran.exit_code == 0, ran.output


def _class_rows(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each detection level's class-score convolution (the Detect head's cv3[i][-1]), as
    (weight, bias) copies."""
    head = model.model[-1]
    return [(b[-1].weight.detach().clone(), b[-1].bias.detach().clone()) for b in head.cv3]


def test_a_detector_grown_by_a_class_keeps_every_weight_and_its_old_class_rows(
    trained: Trained,
) -> None:
    """A dataset with a new class after the detector's: the trainer rebuilt the head and the
    class-score convolutions, of another shape, started from scratch for every class."""
    from ultralytics.nn.tasks import DetectionModel

    from inspection.detector import load_detector
    from training.train_detector import extend_classes

    base = load_detector(trained.weights).model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = load_detector(trained.weights)
    extend_classes(model, NEW_CLASSES)
    grown = model.model
    assert grown.model[-1].nc == grown.yaml["nc"] == 3
    assert grown.names == dict(enumerate(NEW_CLASSES))
    after = grown.state_dict()
    carried = [k for k in before if after[k].shape == before[k].shape]
    assert all(torch.equal(after[k].float(), before[k].float()) for k in carried)
    assert len(carried) == len(before) - 2 * len(grown.model[-1].cv3)  # all but the class rows
    fresh = DetectionModel(grown.yaml, nc=3, verbose=False)  # a new head's own start
    for (weight, bias), (old_weight, old_bias), (_, new_bias) in zip(
        _class_rows(grown), _class_rows(base), _class_rows(fresh), strict=True
    ):
        assert weight.shape[0] == 3
        assert torch.equal(weight[:2], old_weight.float()) and torch.equal(bias[:2], old_bias)
        assert torch.equal(bias[2:], new_bias[2:])  # bias_init's prior for the new class
    extend_classes(model, NEW_CLASSES)  # the same classes: nothing to do
    with pytest.raises(UserError, match="do not begin with"):
        extend_classes(model, ["crack", *CLASSES])


def test_fine_tuning_onto_a_new_class_starts_from_the_old_class_scores(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`train detector --from V` refused a dataset that adds a class after V's: a new defect
    type meant training from scratch, forgetting what V had learned."""
    from db.registry import get_model_version
    from inspection.detector import load_detector
    from tests.conftest import import_with_new_class
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    import_with_new_class(trained.url, tmp_path)
    from training.calibrate import calibrate_model

    # The base calibrated on the data that adds a class: said which model to calibrate instead
    # (it said only "trained on other classes").
    with pytest.raises(UserError, match="'with-crack' adds \\['crack'\\]; calibrate the version"):
        calibrate_model(trained.url, trained.version_name, "with-crack", "val", 0.05)
    started: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def on_pretrain_routine_end(trainer) -> None:  # type: ignore[no-untyped-def]
        started.append(_class_rows(trainer.model))  # after the transfer, before any step

    request = TrainRequest(
        data="with-crack", from_model=trained.version_name, epochs=1, imgsz=64, batch=4
    )
    version_id = train_detector(
        request, url=trained.url, callbacks={"on_pretrain_routine_end": on_pretrain_routine_end}
    )
    base = _class_rows(load_detector(trained.weights).model)
    [rows] = started
    for (weight, bias), (old_weight, old_bias) in zip(rows, base, strict=True):
        assert weight.shape[0] == 3
        assert torch.equal(weight[:2], old_weight.float()) and torch.equal(bias[:2], old_bias)
    with session_scope(trained.url) as session:
        version = get_model_version(session, version_id)
        assert version.classes == NEW_CLASSES
        assert f"fine-tuned from {trained.version_name}" in version.notes
    assert load_detector(Path(version.file_path)).model.names == dict(enumerate(NEW_CLASSES))
    # Calibrated, the new class gets its own threshold like the others (scores as given).
    from training import calibrate
    from training.calibrate import ScoredDetection, ScoredPart

    parts = [
        ScoredPart(defective, (ScoredDetection(c, score, None, defective),))
        for c in NEW_CLASSES
        for defective, score in [(True, 0.6), (True, 0.7), (True, 0.8), (False, 0.1)] * 3
    ]
    monkeypatch.setattr(calibrate, "score_parts", lambda *args, **kwargs: parts)
    calibrate.calibrate_model(
        trained.url, version.name, "with-crack", "val", 0.05, class_thresholds="per-class"
    )
    with session_scope(trained.url) as session:
        per_class = get_model_version(session, version_id).thresholds["per_class"]
    assert set(per_class) == set(NEW_CLASSES) and 0.1 < per_class["crack"] < 0.6


@pytest.mark.parametrize(
    "classes",
    [["scratch", "dent"], list(reversed(CLASSES)), CLASSES[:1], ["scratch", "crack", "spot"]],
)
def test_a_class_renamed_reordered_dropped_or_put_before_is_still_refused(
    classes: list[str],
) -> None:
    from training.train_detector import refuse_other_classes

    version = SimpleNamespace(name="v1", classes=CLASSES)
    with pytest.raises(UserError, match="only adds new ones after them; for a class renamed"):
        refuse_other_classes(version, "d", classes, "fine-tuning")  # type: ignore[arg-type]
    refuse_other_classes(version, "d", NEW_CLASSES, "fine-tuning")  # type: ignore[arg-type]


class _Stop(Exception):
    """Ends a training at its first step: the rows it starts from are all the test needs."""


def test_fine_tuning_keeps_each_class_row_under_its_own_name_when_two_differ_in_case_only(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An import only warns of classes that differ in case ('scratch', 'Scratch'), and
    ultralytics' remapping of class rows by lower-cased name then gave both of them the
    second's rows when fine-tuning: 'scratch' started from what 'Scratch' had learned."""
    from db.models import ModelKind
    from inspection.detector import load_detector
    from tests.synthetic import write_splits, write_voc
    from training.datasets import import_dataset
    from training.train_detector import TrainRequest, train_detector
    from training.versions import register_model_version

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    cased = ["scratch", "Scratch"]
    checkpoint = torch.load(trained.weights, map_location="cpu", weights_only=False)
    for key in ("model", "ema"):
        if checkpoint.get(key) is not None:
            checkpoint[key].names = dict(enumerate(cased))
    weights = tmp_path / "cased.pt"
    torch.save(checkpoint, weights)
    images = write_voc(tmp_path / "src", n=8, classes=cased)
    with session_scope(trained.url) as session:
        register_model_version(
            session,
            weights,
            get_settings().models_dir,
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            class_names=cased,
            image_size=64,
            name="cased",
        )
        import_dataset(
            session,
            "voc",
            tmp_path / "src",
            "cased",
            get_settings().datasets_dir,
            write_splits(tmp_path / "splits", images),
            cased,
        )
    started: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def on_pretrain_routine_end(trainer) -> None:  # type: ignore[no-untyped-def]
        started.append(_class_rows(trainer.model))
        raise _Stop

    request = TrainRequest(data="cased", from_model="cased", epochs=1, imgsz=64, batch=4)
    with pytest.raises(_Stop):
        train_detector(
            request, url=trained.url, callbacks={"on_pretrain_routine_end": on_pretrain_routine_end}
        )
    base = _class_rows(load_detector(weights).model)
    [rows] = started
    for (weight, bias), (old_weight, old_bias) in zip(rows, base, strict=True):
        assert not torch.equal(old_weight[0], old_weight[1])  # (two rows told apart)
        assert torch.equal(weight, old_weight.float()) and torch.equal(bias, old_bias.float())


@pytest.mark.parametrize("kept", [0.5, 0.99])
def test_a_resume_of_a_run_whose_checkpoint_a_full_disk_cut_short_is_refused_in_one_line(
    tmp_path: Path, kept: float
) -> None:
    """ultralytics writes each epoch's last.pt over the one before, in place: a disk that filled
    as it wrote left the file cut short, and `train detector --resume` stopped in a traceback
    from torch. It is now refused in one line naming the run and what to do. (The cut-short
    file is made here: the first half of a checkpoint's bytes, or all but its end.)"""
    from tests.conftest import import_synthetic, migrated
    from training.cli import app

    get_settings.cache_clear()
    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path, n=8)
    last = get_settings().runs_dir / "detect" / "synth-defect-yolo-n-20261126-100000"
    last = last / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "optimizer": {}, "padding": torch.zeros(4096)}, last)
    last.write_bytes(last.read_bytes()[: int(last.stat().st_size * kept)])

    result = CliRunner().invoke(app, ["train", "detector", "--data", "synth", "--resume"])
    assert result.exit_code == 1 and isinstance(result.exception, UserError), result.exception
    said = str(result.exception)
    assert "run synth-defect-yolo-n-20261126-100000 cannot be resumed" in said
    assert f"checkpoint {last} cannot be read" in said and "without --resume" in said


def test_a_dataset_whose_val_images_were_deleted_is_refused_in_one_line_before_a_job(
    tmp_path: Path,
) -> None:
    """A split folder deleted since the import (its counts still in the database) stopped
    `train detector` in ultralytics' traceback ("images not found, missing path"), with a failed
    job behind it and, until then, a run folder."""
    from sqlalchemy import func, select

    from db.models import TrainingJob
    from tests.conftest import import_synthetic, migrated
    from training.cli import app

    get_settings.cache_clear()
    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path, n=8)
    val = get_settings().datasets_dir / "synth" / "images" / "val"
    shutil.rmtree(val)
    result = CliRunner().invoke(
        app,
        ["train", "detector", "--data", "synth", "--model", "defect-yolo-n-plain", "--epochs", "1"]
        + ["--imgsz", "64"],
    )
    assert result.exit_code == 1 and isinstance(result.exception, UserError), result.exception
    assert str(result.exception).startswith(f"dataset 'synth' has no val images in {val} ")
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(TrainingJob)) == 0


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_damaged_base_is_refused_before_a_job(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """`--from VERSION` whose weights were cut short was opened only after the training job
    was recorded: a failed job was left behind. It is now refused first, naming its file."""
    from sqlalchemy import func, select

    from db.models import TrainingJob
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    name = f"cut-short-base-{command}"
    copy, jobs = register_detector_copy(trained, name)
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    given = ["--data", "synth", "--from", name, "--epochs", "1", "--imgsz", "64"]
    if command == "train":
        result = CliRunner().invoke(app, ["train", "detector", *given])
    else:
        result = CliRunner().invoke(
            app, ["distill", "detector", "--teacher", trained.version_name, *given]
        )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    said = str(result.exception)
    # One short line: what is wrong with which file and what to do. (It quoted ultralytics'
    # sentence around torch's paragraph of guesses: "ERROR ❌️ ... internal miniz error ...".)
    assert said == (
        f"--from {name}: cannot load the model {copy}: not a readable checkpoint, damaged or "
        "cut short (PytorchStreamReader failed reading zip archive: failed finding central "
        "directory); restore its file from a backup, or start from another version"
    ), said
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs  # refused before


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ("train", "ENOSPC"),
        ("distill", "ENOSPC"),
        ("train", "EIO"),  # (a disk failing its writes: the system's bare "[Errno 5]" before)
    ],
)
def test_a_run_folder_that_fills_says_which_and_that_nothing_is_registered(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, command: str, error: str
) -> None:
    """A disk that filled as ultralytics wrote an epoch's checkpoint stopped the training with
    the system's bare "[Errno 28] No space left on device": no folder, no word of what was
    kept. (The full disk is simulated: the checkpoint's write leaves a few bytes, then ENOSPC.)"""
    import errno

    from sqlalchemy import func, select
    from ultralytics.engine.trainer import BaseTrainer

    from db.models import JobStatus, ModelVersion, TrainingJob
    from training.cli import app

    def full(self) -> bool:  # type: ignore[no-untyped-def]
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.last.write_bytes(b"PK\x03\x04")  # (what a full disk lets through)
        raise OSError(getattr(errno, error), os.strerror(getattr(errno, error)))

    monkeypatch.setattr(BaseTrainer, "save_model", full)
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        versions = session.scalar(select(func.count(ModelVersion.id)))
    name = f"full-{command}"
    given = ["--data", "synth", "--epochs", "1", "--imgsz", "32", "--batch", "4"]
    if command == "train":
        args = ["train", "detector", "--model", "defect-yolo-n", "--name", name, *given]
    else:
        args = ["distill", "detector", "--teacher", trained.version_name, *given]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    said = str(result.exception)
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(ModelVersion.id))) == versions
        job = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert job is not None and job.status == JobStatus.FAILED
        assert "nothing is registered" in (job.error or "")
    runs = get_settings().runs_dir / "detect"
    [run] = [p for p in runs.glob("*/weights/last.pt") if p.read_bytes() == b"PK\x03\x04"]
    run = run.parent.parent
    reason, fix = {
        "ENOSPC": ("No space left on", "free space there"),
        "EIO": ("Input/output error", "check its disk"),
    }[error]
    assert said.startswith(f"cannot write the training run's folder {run}: {reason}")
    assert "nothing is registered and the training job is marked failed" in said
    assert said.endswith(f"{fix} and train again")
    shutil.rmtree(run)


def test_the_stations_onnx_file_is_on_disk_once_exported(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export the stations run was renamed into place unsynced: after a power cut it could
    be empty under its name, and a station started on it stopped. Its bytes are synced before
    the rename, its folder after."""
    from training.export import export_detector

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    weights = Path(shutil.copy(trained.weights, tmp_path / "station.pt"))
    station = tmp_path / "station.onnx"
    synced: list[tuple[str, bool]] = []  # each path synced, and whether the export had its name
    fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        fsync(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), station.exists()))

    monkeypatch.setattr(os, "fsync", spying_fsync)
    assert export_detector(weights) == station
    folder = synced.index((str(tmp_path.resolve()), True))
    written, named_then = synced[folder - 1]
    assert Path(written).is_file() is False and not named_then  # (renamed since)
    assert Path(written).suffix == ".onnx"


@pytest.mark.parametrize("failing", ["onnx", "int8", "int8-inferred", "onnx-sync"])
def test_an_export_to_a_full_disk_says_where_and_leaves_no_half_file(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """An export to a full disk ended in the system's bare "[Errno 28] No space left on
    device"; `--int8` wrote NAME.int8.onnx in place, so a full disk left a half file where
    stations look for one (and onnxruntime's intermediates beside it), or a traceback where
    onnx's shape inference wrote its file cut short without a word. (The full disk is
    simulated: a write that leaves a few bytes, then ENOSPC, or a file written cut short.)"""
    import errno

    import onnx
    import onnxruntime.quantization

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    folder = tmp_path / "version"
    folder.mkdir()
    weights = Path(shutil.copy(trained.weights, folder / "station.pt"))
    (folder / "station.int8.onnx").write_bytes(b"earlier")

    def cut_short(path: str) -> None:
        Path(path).write_bytes(b"\x08\x07")
        raise OSError(errno.ENOSPC, "No space left on device")

    def sync_fails(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    if failing == "onnx":
        monkeypatch.setattr(onnx, "save", lambda proto, path, *a, **k: cut_short(path))
        args = ["export", str(weights)]
    elif failing == "onnx-sync":  # (a disk failing its writes: the bare "[Errno 5]" before)
        monkeypatch.setattr(os, "fsync", sync_fails)
        args = ["export", str(weights)]
    else:
        if failing == "int8":
            fake = lambda source, written, *a, **k: cut_short(written)  # noqa: E731
            monkeypatch.setattr(onnxruntime.quantization, "quantize_static", fake)
        else:  # (C++ writes the file cut short and says nothing)

            def inferred(source: str, out: str, *a: object, **k: object) -> None:
                # (onnxruntime's intermediates went to the system's temporary folder, a disk
                # the message, naming the model's folder, did not speak of.)
                assert Path(out).is_relative_to(folder), out
                Path(out).write_bytes(Path(source).read_bytes()[:999])

            monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", inferred)
        args = ["export", str(weights), "--int8", "--data", "synth", "--calibration-images", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    said = str(result.exception)
    kept = {"station.pt", "station.int8.onnx"}
    if failing == "onnx":
        assert said.startswith(f"cannot write the ONNX export in {folder}: No space left on")
        assert "nothing is exported" in said
    elif failing == "onnx-sync":
        assert said == (
            f"cannot write the ONNX export in {folder}: Input/output error; nothing is "
            "exported, the .onnx files there are as they were: check its disk and export again"
        )
    else:
        assert said.startswith(f"cannot write the INT8 model in {folder}: ")
        assert "no INT8 model is exported, station.int8.onnx is as it was" in said
        kept.add("station.onnx")
    assert {p.name for p in folder.iterdir()} == kept  # (no half file, no intermediate)
    assert (folder / "station.int8.onnx").read_bytes() == b"earlier"


@pytest.mark.parametrize(
    ("device", "said"),
    [
        ("gpu", "--device gpu: a device is cpu, cuda, cuda:N (or N), or GPUs such as 0,1"),
        pytest.param(
            "cuda",
            "--device cuda: no CUDA GPU is visible on this machine: train with --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here"),
        ),
        pytest.param(
            "0,1",
            "--device 0,1: no CUDA GPU is visible on this machine: train with --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here"),
        ),
    ],
)
def test_a_device_this_machine_lacks_is_refused_in_one_line_before_a_job(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, device: str, said: str
) -> None:
    """`--device cuda` on a machine without a GPU was refused by ultralytics after the job was
    recorded, in a paragraph naming `device=0`: a failed job was left for a typo's sake."""
    from sqlalchemy import func, select

    from db.models import TrainingJob
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        jobs = session.scalar(select(func.count(TrainingJob.id)))
    given = ["--data", "synth", "--epochs", "1", "--imgsz", "64", "--device", device]
    result = CliRunner().invoke(app, ["train", "detector", *given])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    assert str(result.exception) == said
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs  # refused before


def test_a_run_of_one_dataset_is_not_resumed_on_another(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--resume --name RUN` finds a run of any dataset: one stopped on "synth" went on with
    another dataset's images (of the same classes) and was registered as trained on it."""
    from sqlalchemy import func, select

    from db.models import TrainingJob
    from tests.synthetic import write_splits, write_voc
    from training.datasets import import_dataset
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    images = write_voc(tmp_path / "src", n=12, seed=3)
    with session_scope(trained.url) as session:
        import_dataset(
            session,
            "voc",
            tmp_path / "src",
            "synth-other-line",
            get_settings().datasets_dir,
            write_splits(tmp_path / "splits", images),
            CLASSES,
        )
    request = TrainRequest(
        data="synth",
        architecture="defect-yolo-n-plain",
        epochs=2,
        imgsz=64,
        batch=4,
        name="stopped-on-synth",
    )

    def stop_after_first_epoch(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(
            request, url=trained.url, callbacks={"on_model_save": stop_after_first_epoch}
        )
    with session_scope(trained.url) as session:
        jobs = session.scalar(select(func.count(TrainingJob.id)))
    other = TrainRequest(data="synth-other-line", resume=True, name="stopped-on-synth")
    with pytest.raises(UserError) as refused:
        train_detector(other, url=trained.url)
    assert str(refused.value) == (
        "the interrupted run stopped-on-synth trains on 'synth', not 'synth-other-line': "
        "resume it with --data synth, or train on 'synth-other-line' without --resume"
    )
    with session_scope(trained.url) as session:  # refused before a job was recorded
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs


def test_a_time_budget_shorter_than_an_epoch_says_the_model_barely_learned(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ultralytics fits the epochs to a budget only after a whole one: a budget shorter than
    that stopped the first epoch after a batch, and the untrained model was registered with
    nothing said but "epochs: 1"."""
    import re

    from sqlalchemy import select

    from db.models import TrainingJob
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = TrainRequest(
        data="synth", architecture="defect-yolo-n-plain", epochs=3, imgsz=64, batch=4, hours=1e-9
    )
    # (A budget of microseconds: ultralytics looks at the clock only after an optimizer step,
    # and the steps spread apart during warm-up, so a first batch quicker than a budget of a
    # second let a fast machine finish the epoch before its next look.)
    version_id = train_detector(request, url=trained.url)
    said = re.search(
        r"warning: the time budget \(--hours 1e-09\) ended the first epoch after (\d+) of its "
        r"(\d+) batches: the model has barely begun to learn; give --hours more than one "
        r"epoch's time",
        capsys.readouterr().err,
    )
    # (The budget is looked at after each step: a first batch quicker than it lets a second in.)
    assert said is not None and int(said[1]) < int(said[2])
    with session_scope(trained.url) as session:
        job = session.scalars(
            select(TrainingJob).where(TrainingJob.result_model_version_id == version_id)
        ).one()
        assert job.log.splitlines()[-1] == said[0].removeprefix("warning: ")


def test_cpu_training_runs_on_the_cores_the_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training on the CPU set torch's threads to every core of the machine: under `taskset`
    or a container's cores, a thread per machine core oversubscribed the few it was given."""
    import os
    from types import SimpleNamespace

    import torch

    from training.train_detector import _use_every_cpu_core

    if not hasattr(os, "sched_getaffinity") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs a machine of two cores or more that limits a process's cores")
    threads = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # (as under `taskset -c 0`)
    try:
        _use_every_cpu_core(SimpleNamespace(device=torch.device("cpu")))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_a_training_whose_registration_commit_fails_after_it_was_made_succeeds(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dropped during the COMMIT of the registration, the server having
    committed: the job was recorded failed over its succeeded row, its version registered
    (`defects jobs` said failed for a job whose version exists). The database names the
    version: the training succeeds, and so does its job."""
    from tests.conftest import assert_training_stood_through_a_dropped_commit
    from training.train_detector import TrainRequest, train_detector

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = TrainRequest(data="synth", architecture="defect-yolo-n", epochs=1, imgsz=64, batch=4)
    assert_training_stood_through_a_dropped_commit(
        trained.url, lambda: train_detector(request, url=trained.url)
    )

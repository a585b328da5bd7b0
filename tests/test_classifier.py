"""Classifier, verdict with classifier and verification, calibration through the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from db.registry import get_model_version
from db.session import session_scope
from inspection.classifier import (
    BACKBONES,
    GOOD,
    DefectClassifier,
    load_classifier,
    save_classifier,
)
from inspection.engine import Inspector, PartInput
from inspection.settings import get_settings
from inspection.verdict import Detection, Thresholds, part_fails, verify
from tests.conftest import Trained
from tests.synthetic import CLASSES, make_images
from training.datasets import split_image_paths
from training.train_classifier import (
    build_samples,
    mine_hard_negatives,
    part_label,
    read_split,
)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_backbone_builds_with_fpn_and_attention(backbone: str) -> None:
    model = DefectClassifier(backbone, [GOOD, *CLASSES]).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    assert len(model.features(torch.zeros(1, 3, 64, 64))) == 3


def test_part_labels_and_samples() -> None:
    assert part_label([]) == 0
    # The class covering the most area names the part: one big spot beats two small scratches.
    boxes = [(0, (0.0, 0.0, 2.0, 2.0)), (0, (5.0, 5.0, 7.0, 7.0)), (1, (10.0, 10.0, 20.0, 20.0))]
    assert part_label(boxes) == 2
    pixels = [np.zeros((64, 64, 3), dtype=np.uint8)]
    samples = build_samples(pixels, [[(0, (10.0, 10.0, 20.0, 20.0))]])
    assert samples[0].box is None and samples[0].label == 1
    assert samples[1].box == (10.0, 10.0, 20.0, 20.0) and samples[1].label == 1
    assert all(s.label == 0 for s in samples[2:])


def test_good_crops_include_defect_sized_ones_and_hard_negatives() -> None:
    pixels = [np.zeros((64, 64, 3), dtype=np.uint8), np.zeros((64, 64, 3), dtype=np.uint8)]
    boxes: list[list[tuple[int, tuple[float, float, float, float]]]] = [
        [(0, (10.0, 10.0, 18.0, 14.0))],
        [],  # a good image: its small crops are shaped like the split's defects too
    ]
    samples = build_samples(pixels, boxes, hard_negatives={1: [(40.0, 40.0, 50.0, 50.0)]})
    good = [s for s in samples if s.label == 0 and s.box is not None]
    shapes = {(s.image_index, round(s.box[2] - s.box[0]), round(s.box[3] - s.box[1])) for s in good}
    assert (0, 8, 4) in shapes and (1, 8, 4) in shapes
    assert any(s.image_index == 1 and s.box == (40.0, 40.0, 50.0, 50.0) for s in good)
    defect = boxes[0][0][1]
    assert not any(
        s.image_index == 0
        and s.box[0] < defect[2]
        and defect[0] < s.box[2]
        and s.box[1] < defect[3]
        and defect[1] < s.box[3]
        for s in good
    )


def test_hard_negatives_are_detections_that_touch_no_labeled_defect(trained: Trained) -> None:
    root = trained.data_dir / "datasets" / "synth"
    _, boxes = read_split(root, "train")
    paths = split_image_paths(root, "train")
    # At a confidence floor of 0 the one-epoch detector finds plenty, most of them false.
    found = mine_hard_negatives(trained.weights, paths, boxes, min_confidence=0.0, per_image=3)
    assert found and all(1 <= len(v) <= 3 for v in found.values())
    for index, negatives in found.items():
        for x1, y1, x2, y2 in negatives:
            for _, (a1, b1, a2, b2) in boxes[index]:
                assert not (x1 < a2 and a1 < x2 and y1 < b2 and b1 < y2)


def test_verdict_with_classifier_and_verification() -> None:
    thresholds = Thresholds.from_dict(
        {"per_class": {"scratch": 0.5}, "classifier": {"version": "c", "part": 0.7, "verify": 0.6}},
        CLASSES,
    )
    detection = Detection("scratch", 0.8, 0, 0, 5, 5, counted=True)
    rejected = verify(detection, 0.3, thresholds)
    assert rejected.counted is False and rejected.verification == 0.3
    assert verify(detection, 0.9, thresholds).counted is True
    assert part_fails([rejected], 0.2, thresholds) is False  # a false call cut by verification
    assert part_fails([rejected], 0.75, thresholds) is True  # the part classifier fails it
    assert part_fails([], None, thresholds) is False
    assert Thresholds.from_dict(thresholds.to_dict(), CLASSES) == thresholds


def test_classifier_checkpoint_is_plain_weights(trained: Trained, trained_classifier: str) -> None:
    with session_scope(trained.url) as session:
        version = get_model_version(session, trained_classifier)
        weights = Path(version.file_path)
        assert version.metrics["device"] == "cpu"
    checkpoint = torch.load(weights, weights_only=True)
    assert checkpoint["class_names"] == [GOOD, *CLASSES]
    model, size = load_classifier(weights)
    assert size == 64 and model.class_names == [GOOD, *CLASSES]


def test_evaluate_export_and_calibrate_with_the_classifier(
    trained: Trained, trained_classifier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    runner = CliRunner()
    out = tmp_path / "cls.json"
    result = runner.invoke(
        app, ["evaluate", trained_classifier, "--data", "synth", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    payload = json.loads(out.read_text())
    assert payload["confusion_matrix"]["classes"] == [GOOD, *CLASSES]
    assert sum(map(sum, payload["confusion_matrix"]["rows_truth_columns_prediction"])) == 4
    assert 0.0 <= payload["top1_accuracy"] <= 1.0

    result = runner.invoke(app, ["export", trained_classifier])
    assert result.exit_code == 0, result.output
    with session_scope(trained.url) as session:
        weights = Path(get_model_version(session, trained_classifier).file_path)
    from training.export import read_metadata

    metadata = read_metadata(weights.with_suffix(".onnx"))
    assert json.loads(metadata["defects.classes"]) == [GOOD, *CLASSES]
    # (Its own placeholder thresholds read as the ones stations judge at: left out.)
    assert not any(key.endswith("thresholds") for key in metadata)
    onnx_session = ort.InferenceSession(
        str(weights.with_suffix(".onnx")), providers=["CPUExecutionProvider"]
    )
    model, _ = load_classifier(weights)
    image = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(image).numpy()
    [actual] = onnx_session.run(None, {"images": image.numpy()})
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)

    from db.models import ModelStage

    with session_scope(trained.url) as session:  # (archived: calibrating with it brings it back)
        archived = get_model_version(session, trained_classifier)
        archived.stage = ModelStage.ARCHIVED
        # (Given by its id, it is said by its name: "3 was archived" named no version.)
        classifier_id = str(archived.id)
    result = runner.invoke(
        app,
        [
            "calibrate",
            trained.version_name,
            "--data",
            "synth",
            "--split",
            "val",
            "--max-miss-rate",
            "0",
            "--classifier",
            classifier_id,
            "--verify-threshold",
            "0.0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "95% upper bound" in result.output
    assert "one-sided, Clopper-Pearson exact" in result.output  # which bound it is
    assert f"{trained_classifier} was archived: it is a candidate again" in " ".join(
        result.output.split()
    )
    with session_scope(trained.url) as session:
        assert get_model_version(session, trained_classifier).stage == ModelStage.CANDIDATE
    # evaluate at that operating point counts as calibrate did: with the classifier (it
    # counted the detector alone, and the two disagreed on the same split).
    figures = tmp_path / "val.json"
    evaluated = runner.invoke(
        app,
        ["evaluate", trained.version_name, "--data", "synth", "--split", "val"]
        + ["--json", str(figures)],
    )
    assert evaluated.exit_code == 0, evaluated.output
    payload = json.loads(figures.read_text())
    assert payload["part_figures_with_classifier"] == trained_classifier
    with session_scope(trained.url) as session:
        version = get_model_version(session, trained.version_name)
        operating_point = version.thresholds
        # The trained detector is shared between tests: put its default operating point back.
        from training.versions import default_thresholds

        version.thresholds = default_thresholds(CLASSES)
    assert operating_point["classifier"]["version"] == trained_classifier
    assert operating_point["calibration"]["n_defective"] == 4  # val: parts 1, 7, 13 and 19
    assert operating_point["calibration"]["n_missed"] == 0
    calibrated = operating_point["calibration"]
    assert (payload["n_defective"], payload["n_missed"], payload["n_good"]) == (
        calibrated["n_defective"],
        calibrated["n_missed"],
        calibrated["n_good"],
    )
    assert payload["n_false_calls"] == calibrated["n_false_calls"]

    # The crop threshold calibrated too; a bad value, or verification without a classifier, is
    # a clear error.
    calibrate_args = [
        "calibrate",
        trained.version_name,
        "--data",
        "synth",
        "--max-miss-rate",
        "0",
    ]
    result = runner.invoke(
        app,
        [*calibrate_args, "--classifier", trained_classifier, "--verify-threshold", "auto"],
    )
    assert result.exit_code == 0, result.output
    with session_scope(trained.url) as session:
        version = get_model_version(session, trained.version_name)
        auto_point = version.thresholds
        version.thresholds = default_thresholds(CLASSES)
    assert auto_point["calibration"]["n_missed"] == 0
    verify_used = auto_point["classifier"]["verify"]
    assert verify_used is None or 0.0 <= verify_used <= 1.0
    assert ("crop's defect probability" in result.output) == (verify_used is not None)
    result = runner.invoke(
        app,
        [*calibrate_args, "--classifier", trained_classifier, "--verify-threshold", "high"],
    )
    assert result.exit_code != 0 and "probability or auto" in str(result.exception)
    result = runner.invoke(app, [*calibrate_args, "--verify-threshold", "auto"])
    assert result.exit_code != 0 and "needs a classifier" in str(result.exception)

    # The calibrated operating point brings its classifier into inspection.
    inspector = Inspector.from_weights(
        trained.weights, operating_point, "pytorch", classifier_weights=weights
    )
    images = make_images(tmp_path / "imgs", n=3, seed=4)
    results = list(
        inspector.inspect(
            PartInput(i.name, (tmp_path / "imgs" / i.name).read_bytes()) for i in images
        )
    )
    assert all(r.defect_probability is not None and 0 <= r.defect_probability <= 1 for r in results)


def test_a_taken_name_is_refused_before_training(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was refused only when the trained model was registered, the training thrown away."""
    from inspection.errors import UserError
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = ClassifierTrainRequest(data="synth", epochs=50, imgsz=64, name=trained.version_name)
    with pytest.raises(UserError, match="already exists"):
        train_classifier(request, url=trained.url)


@pytest.mark.parametrize("name", ["../../outside", "a/b", "..", ".hidden", "", "x" * 1000])
def test_a_version_name_that_is_not_one_plain_folder_is_refused_before_training(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    """A model version's name is its folder in the model store: `--name ../../outside` copied
    the weights outside the data folder (and "a/b" into a folder of another version's)."""
    from db.models import ModelKind
    from inspection.errors import UserError
    from training.train_classifier import ClassifierTrainRequest, train_classifier
    from training.train_detector import TrainRequest, train_detector
    from training.versions import register_model_version

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = ClassifierTrainRequest(data="synth", epochs=50, imgsz=64, name=name)
    with pytest.raises(UserError, match="model version name"):
        train_classifier(request, url=trained.url)
    store = tmp_path / "store" / "models"
    with session_scope(trained.url) as session, pytest.raises(UserError, match="version name"):
        register_model_version(
            session,
            trained.weights,
            store,
            kind=ModelKind.DETECTOR,
            architecture="x",
            class_names=list(CLASSES),
            image_size=64,
            name=name,
        )
    assert not (tmp_path / "store").exists() and not (tmp_path / "outside").exists()
    # A detector's --name is its training run's folder under runs/.
    with pytest.raises(UserError, match="training run name"):
        train_detector(TrainRequest(data="synth", epochs=1, name=name), url=trained.url)


def test_a_classifier_is_checked_where_it_would_go_to_work(
    trained: Trained, trained_classifier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier of other classes (or a detector) was stored as the operating point's, and
    every station judged with it; export options a classifier ignores passed in silence; an
    archived classifier went on verifying; a promoted one was called production and did
    nothing; a missing split was an errno message."""
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    runner = CliRunner()
    with session_scope(trained.url) as session:
        classifier = get_model_version(session, trained_classifier)
        right_classes, point = (
            list(classifier.classes),
            dict(get_model_version(session, trained.version_name).thresholds),
        )
        classifier.classes = [GOOD, *CLASSES[:-1]]  # as if trained on another dataset
    calibrate = ["calibrate", trained.version_name, "--data", "synth", "--max-miss-rate", "0"]
    result = runner.invoke(app, [*calibrate, "--classifier", trained_classifier])
    assert result.exit_code != 0 and "knows other classes" in str(result.exception)
    result = runner.invoke(app, [*calibrate, "--classifier", trained.version_name])
    assert result.exit_code != 0 and "is not a classifier" in str(result.exception)
    with session_scope(trained.url) as session:
        assert get_model_version(session, trained.version_name).thresholds == point  # unchanged
        get_model_version(session, trained_classifier).classes = right_classes

    result = runner.invoke(app, ["export", trained_classifier, "--int8", "--data", "synth"])
    assert result.exit_code != 0 and "for detectors only" in str(result.exception)
    result = runner.invoke(
        app, ["evaluate", trained_classifier, "--data", "synth", "--split", "tset"]
    )
    assert result.exit_code != 0 and "has no tset split" in str(result.exception)
    result = runner.invoke(app, ["models", "promote", trained_classifier])
    assert result.exit_code != 0 and "is a classifier" in str(result.exception)

    with session_scope(trained.url) as session:
        detector = get_model_version(session, trained.version_name)
        detector.thresholds = {**point, "classifier": {"version": trained_classifier}}
    with session_scope(trained.url) as session:
        classifier_file = Path(get_model_version(session, trained_classifier).file_path)
    hidden = classifier_file.with_name("hidden.pt")
    try:
        result = runner.invoke(app, ["models", "archive", trained_classifier])
        assert result.exit_code != 0 and "verifies the verdicts of" in str(result.exception)
        classifier_file.rename(hidden)  # said before the detector's validation, not after
        result = runner.invoke(app, ["evaluate", trained.version_name, "--data", "synth"])
        assert result.exit_code != 0
        assert str(result.exception).startswith(f"the weights of {trained_classifier} are missing")
    finally:
        if hidden.exists():
            hidden.rename(classifier_file)
        with session_scope(trained.url) as session:
            get_model_version(session, trained.version_name).thresholds = point


def _classifier_alone_in_production(trained: Trained, classifier: str) -> str:
    """This test's database with the tiny detector in production, every class off and the part
    classifier failing every part (part threshold 0): a verdict only the classifier gives."""
    from tests.conftest import migrated, register_classifier_copy, register_production_detector

    url = get_settings().resolved_database_url
    migrated(url)
    register_production_detector(url, trained.weights, get_settings().models_dir)
    register_classifier_copy(trained.url, classifier, url)
    with session_scope(url) as session:
        get_model_version(session, "tiny").thresholds = {
            "per_class": dict.fromkeys(CLASSES, 1.01),
            "default": 1.01,
            "iou": 0.45,
            "classifier": {"version": "verifier", "part": 0.0, "verify": None},
        }
    return url


def test_a_part_the_part_classifier_fails_says_so(
    trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    """`defects inspect` and the Inspect page listed such a part as FAIL with no reason: no
    defect counted, and the classifier's probability not shown."""
    from streamlit.testing.v1 import AppTest

    from training.cli import app

    _classifier_alone_in_production(trained, trained_classifier)
    images = make_images(tmp_path / "parts", n=2, seed=7)
    paths = [str(tmp_path / "parts" / i.name) for i in images]
    result = CliRunner().invoke(app, ["inspect", *paths])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if ": FAIL" in line]
    assert len(lines) == 2 and all(": FAIL part classifier 0." in line for line in lines)
    as_json = CliRunner().invoke(app, ["inspect", "--json", *paths])
    rows = json.loads(as_json.stdout)
    assert all(
        r["defects"] == [] and r["part_classifier"].startswith("part classifier") for r in rows
    )
    assert all(0.0 <= r["defect_probability"] <= 1.0 for r in rows)

    at = AppTest.from_file(
        str(Path(__file__).parents[1] / "dashboard" / "app.py"), default_timeout=120
    ).run()
    uploads = [(i.name, (tmp_path / "parts" / i.name).read_bytes(), "image/png") for i in images]
    at.file_uploader(key="inspect_files").set_value(uploads).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table["verdict"].tolist() == ["fail", "fail"]
    assert all(d.startswith("part classifier 0.") for d in table["defects"])


def test_an_unknown_backbone_is_refused_before_a_job_is_recorded(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped --backbone was said only after the images were read, and left a failed
    training job on the Models page."""
    from sqlalchemy import func, select

    from db.models import TrainingJob
    from inspection.errors import UserError
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        jobs = session.scalar(select(func.count(TrainingJob.id)))
    request = ClassifierTrainRequest(data="synth", backbone="resnet81", epochs=1, imgsz=64)
    with pytest.raises(UserError, match="unknown classifier backbone 'resnet81'"):
        train_classifier(request, url=trained.url)
    with session_scope(trained.url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == jobs


def test_a_batch_csv_keeps_the_part_classifiers_probability(
    trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    """A part the part classifier failed was a CSV row "fail" with no defect and confidence 0:
    nothing said why it failed."""
    import csv

    from training.cli import app

    _classifier_alone_in_production(trained, trained_classifier)
    make_images(tmp_path / "parts", n=3, seed=8)
    target = tmp_path / "run.csv"
    args = ["batch", str(tmp_path / "parts"), "--line", "L", "--station", "S"]
    result = CliRunner().invoke(app, [*args, "--output", str(target)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 3 and {r["verdict"] for r in rows} == {"fail"}
    assert all(r["defects"] == "" and 0.0 <= float(r["defect_probability"]) <= 1.0 for r in rows)


def test_a_classifier_is_evaluated_at_the_part_threshold_stations_use(
    trained: Trained, trained_classifier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its part rates were counted at 0.5, the classifier's placeholder, while stations fail
    parts at the threshold the production detector's calibration stored for it."""
    from db.models import ModelKind, ModelStage
    from db.registry import production_model
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        detector = production_model(session, ModelKind.DETECTOR) or get_model_version(
            session, trained.version_name
        )
        name, saved = detector.name, (detector.thresholds, detector.stage)
        detector.stage = ModelStage.PRODUCTION
        detector.thresholds = {
            **detector.thresholds,
            "classifier": {"version": trained_classifier, "part": 0.123, "verify": None},
        }
    try:
        result = CliRunner().invoke(app, ["evaluate", trained_classifier, "--data", "synth"])
    finally:
        with session_scope(trained.url) as session:
            detector = get_model_version(session, name)
            detector.thresholds, detector.stage = saved
    assert result.exit_code == 0, result.output
    assert (
        f"at defect probability >= 0.123 (the part threshold of {name}'s operating point)"
        in " ".join(result.output.split())
    )


def test_a_batch_summary_counts_the_parts_the_part_classifier_failed_alone(
    trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    """The summary's "failed by class" left out the parts the part classifier failed with no
    counted defect: on a DeepPCB walk-through, a third of the failed boards were in no class,
    and nothing said so."""
    from training.cli import app

    _classifier_alone_in_production(trained, trained_classifier)
    make_images(tmp_path / "parts", n=3, seed=9)
    args = ["batch", str(tmp_path / "parts"), "--line", "L", "--station", "S"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 failed" in result.output
    assert "failed by the part classifier alone (no defect found): 3" in result.output
    assert "failed by class:" not in result.output


def test_the_pareto_shows_the_parts_the_part_classifier_failed_alone(
    trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    """The History page's Pareto counted failed parts per counted defect class only: the parts
    the part classifier failed with no defect (many of the failed DeepPCB boards) were not in it."""
    from db.queries import PART_CLASSIFIER_ALONE, defect_pareto
    from training.cli import app

    url = _classifier_alone_in_production(trained, trained_classifier)
    make_images(tmp_path / "parts", n=3, seed=10)
    args = ["batch", str(tmp_path / "parts"), "--line", "L", "--station", "S"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with session_scope(url) as session:
        rows = defect_pareto(session)
    assert [(r.class_name, r.failed_parts, r.cumulative_share) for r in rows] == [
        (PART_CLASSIFIER_ALONE, 3, 1.0)
    ]


def test_grayscale_boards_stay_one_channel_in_memory_for_training(tmp_path: Path) -> None:
    """DeepPCB's boards are one-channel JPEGs; the classifier's training held every image of
    the split as RGB (three times the memory for DeepPCB's one-channel boards). Kept one
    channel, its crops are the same three-channel tensors, and a classifier trains on them."""
    from tests.conftest import migrated
    from tests.synthetic import write_deeppcb
    from training.cli import app
    from training.evaluate import evaluate_classifier
    from training.train_classifier import ClassifierTrainRequest, CropDataset, train_classifier

    write_deeppcb(tmp_path / "deeppcb", boards=8, test=2)
    url = get_settings().resolved_database_url
    migrated(url)
    result = CliRunner().invoke(
        app, ["import", "deeppcb", str(tmp_path / "deeppcb"), "--name", "pcb"]
    )
    assert result.exit_code == 0, result.output
    root = get_settings().datasets_dir / "pcb"
    images, boxes = read_split(root, "train")
    assert images and all(image.ndim == 2 for image in images)
    samples = build_samples(images, boxes)
    as_rgb = [np.repeat(image[:, :, None], 3, axis=2) for image in images]
    kept, rgb = CropDataset(images, samples, 32, False), CropDataset(as_rgb, samples, 32, False)
    for i in range(len(samples)):
        assert kept[i][0].shape == (3, 32, 32)
        assert torch.equal(kept[i][0], rgb[i][0]) and kept[i][1] == rgb[i][1]
    request = ClassifierTrainRequest(
        data="pcb", backbone="mobilenet_v3_small", epochs=1, imgsz=32, batch=4, device="cpu"
    )
    version_id = train_classifier(request, url=url)
    with session_scope(url) as session:
        weights = Path(get_model_version(session, version_id).file_path)
    evaluation = evaluate_classifier(weights, "pcb", "test", url=url)
    assert (evaluation.rates.n_defective, evaluation.rates.n_good) == (2, 2)


def test_an_epoch_says_where_it_stands_while_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal (tqdm off) an epoch said nothing until it ended, and the Models page's
    bar moved only between epochs."""
    from training.train_classifier import EpochProgress

    now = [0.0]
    stored: list[float] = []
    progress = EpochProgress(1, 4, 10, stored.append, echo=True, clock=lambda: now[0], every_s=30.0)
    losses: list[float] = []
    for seconds, loss in zip(range(0, 100, 10), [1.0] * 10, strict=True):
        now[0] = float(seconds)
        losses.append(loss)
        progress.batch_done(losses)
    # At 30 s (4 batches) and 60 s (7); at 90 s the epoch's last batch, its own line follows.
    assert stored == [pytest.approx((1 + 0.4) / 4), pytest.approx((1 + 0.7) / 4)]
    assert capsys.readouterr().out.splitlines() == [
        "epoch 2/4: batch 4/10, loss 1.0000",
        "epoch 2/4: batch 7/10, loss 1.0000",
    ]
    quiet = EpochProgress(0, 1, 3, stored.append, echo=False, clock=lambda: now[0], every_s=0.0)
    quiet.batch_done([1.0])
    assert capsys.readouterr().out == "" and stored[-1] == pytest.approx(1 / 3)


def test_a_classifier_training_stopped_says_what_became_of_it(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (or a service's SIGTERM) ended it on a bare "interrupted": that nothing was
    registered and that it does not resume went unsaid."""
    from sqlalchemy import select

    from db.models import JobStatus, TrainingJob
    from inspection.errors import Stopped
    from training.train_classifier import ClassifierTrainRequest, EpochProgress, train_classifier

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()

    def pressed(self: EpochProgress, losses: list[float]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(EpochProgress, "batch_done", pressed)
    request = ClassifierTrainRequest(
        data="synth", backbone="mobilenet_v3_small", epochs=1, imgsz=32, batch=8, device="cpu"
    )
    with pytest.raises(Stopped):  # (said: the command line adds no "interrupted")
        train_classifier(request, url=trained.url)
    said = capsys.readouterr().err
    assert "no classifier was registered" in said and "does not resume" in said
    with session_scope(trained.url) as session:
        job = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert job is not None and job.status == JobStatus.CANCELLED


def _version_rows(url: str, rows: list[tuple[str, Any, dict[str, Any]]]) -> None:
    """Model versions as rows alone (no weights), each (name, kind, other columns), in a new
    database at `url`: for the rules of the registry, which never open a file."""
    from db.models import ModelKind, ModelVersion
    from tests.conftest import migrated

    migrated(url)
    with session_scope(url) as session:
        for name, kind, columns in rows:
            classes = [GOOD, *CLASSES] if kind == ModelKind.CLASSIFIER else list(CLASSES)
            session.add(
                ModelVersion(
                    name=name,
                    kind=kind,
                    architecture="a",
                    file_path=name,
                    sha256="0" * 64,
                    classes=classes,
                    **columns,
                )
            )


def test_a_classifier_named_by_a_replaced_detector_is_not_archived() -> None:
    """The archive check looked only at detectors not archived: once the detector whose
    operating point named the classifier was replaced (and so archived), the classifier could
    be archived, and `models rollback` put that detector back to work with it."""
    from db.models import ModelKind, ModelStage
    from training.cli import app

    url = get_settings().resolved_database_url
    _version_rows(
        url,
        [
            (
                "first",
                ModelKind.DETECTOR,
                {"thresholds": {"classifier": {"version": "verifier", "part": 0.5}}},
            ),
            ("second", ModelKind.DETECTOR, {}),
            ("verifier", ModelKind.CLASSIFIER, {}),
        ],
    )
    runner = CliRunner()
    for command in (["models", "promote", "first"], ["models", "promote", "second"]):
        assert runner.invoke(app, command).exit_code == 0
    result = runner.invoke(app, ["models", "archive", "verifier"])
    assert result.exit_code != 0
    assert str(result.exception) == (
        "verifier verifies the verdicts of first (archived: a rollback or promotion puts it "
        "back), named by their operating point: calibrate those without it first"
    )
    assert runner.invoke(app, ["models", "rollback"]).exit_code == 0
    with session_scope(url) as session:
        assert get_model_version(session, "first").stage == ModelStage.PRODUCTION
        assert get_model_version(session, "verifier").stage != ModelStage.ARCHIVED
    # Calibrated without it, the classifier is free to go.
    with session_scope(url) as session:
        get_model_version(session, "first").thresholds = {}
    result = runner.invoke(app, ["models", "archive", "verifier"])
    assert result.exit_code == 0, result.output


def test_an_operating_point_naming_an_archived_classifier_brings_it_back() -> None:
    """`calibrate --classifier` (or the Settings page) with an archived classifier stored an
    operating point naming it: stations then judged every part with an archived model, which
    `models archive` refuses to make, and no command could bring it back among the candidates."""
    from db.models import ModelKind, ModelStage
    from training.calibrate import store_operating_point

    url = get_settings().resolved_database_url
    _version_rows(
        url,
        [
            ("detector", ModelKind.DETECTOR, {"stage": ModelStage.PRODUCTION}),
            ("verifier", ModelKind.CLASSIFIER, {"stage": ModelStage.ARCHIVED}),
            ("other", ModelKind.CLASSIFIER, {"stage": ModelStage.ARCHIVED}),
        ],
    )
    point = {"per_class": {}, "classifier": {"version": "verifier", "part": 0.5, "verify": None}}
    assert store_operating_point(url, "detector", point)
    with session_scope(url) as session:
        verifier = get_model_version(session, "verifier")
        assert verifier.stage == ModelStage.CANDIDATE and verifier.archived_at is None
        assert get_model_version(session, "other").stage == ModelStage.ARCHIVED
        assert get_model_version(session, "detector").stage == ModelStage.PRODUCTION


def test_an_operating_point_is_refused_over_its_classifier_archived_since() -> None:
    """A classifier a candidate when its calibration was computed and archived before the
    point was stored (while `calibrate` scored the split, or the Settings page showed it) was
    brought back as if it had never been retired, and `calibrate` said nothing of it. Checked
    now in the storing transaction: refused, nothing stored; one archived already when the
    calibration was computed still comes back, as said then."""
    from db.models import ModelKind, ModelStage
    from inspection.errors import UserError
    from training.calibrate import store_operating_point

    url = get_settings().resolved_database_url
    _version_rows(
        url,
        [
            ("detector", ModelKind.DETECTOR, {"stage": ModelStage.PRODUCTION}),
            ("verifier", ModelKind.CLASSIFIER, {"stage": ModelStage.ARCHIVED}),
        ],
    )
    with session_scope(url) as session:
        before = dict(get_model_version(session, "detector").thresholds)
    point = {"per_class": {}, "classifier": {"version": "verifier", "part": 0.5, "verify": None}}
    with pytest.raises(UserError, match="^verifier was archived since this calibration was"):
        store_operating_point(url, "detector", point, classifier_archived=False)
    with session_scope(url) as session:
        assert get_model_version(session, "verifier").stage == ModelStage.ARCHIVED
        assert get_model_version(session, "detector").thresholds == before
    assert store_operating_point(url, "detector", point, classifier_archived=True)
    with session_scope(url) as session:
        assert get_model_version(session, "verifier").stage == ModelStage.CANDIDATE


def test_a_classifier_version_whose_weights_are_damaged_is_said_as_a_classifier(
    tmp_path: Path,
) -> None:
    """evaluate and export told a classifier from a detector by loading its file: a damaged
    classifier was taken for a detector, ultralytics' message said of it, and the export named
    a scratch folder's copy of it, a path that was gone by then."""
    from db.models import ModelKind, ModelVersion
    from tests.conftest import import_synthetic, migrated
    from training.cli import app

    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path, n=12)
    damaged = tmp_path / "verifier" / "best.pt"
    damaged.parent.mkdir()
    model = DefectClassifier("mobilenet_v3_small", [GOOD, *CLASSES])
    save_classifier(model, damaged, 64)
    damaged.write_bytes(damaged.read_bytes()[:4096])  # cut short, as by a copy that failed
    with session_scope(url) as session:
        session.add(
            ModelVersion(
                name="verifier",
                kind=ModelKind.CLASSIFIER,
                architecture="defect-cls-mobilenet_v3_small",
                file_path=str(damaged),
                sha256="0" * 64,
                classes=[GOOD, *CLASSES],
                thresholds={},
            )
        )
    runner = CliRunner()
    for command in (["evaluate", "verifier", "--data", "synth"], ["export", "verifier"]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0
        message = str(result.exception)
        assert message.startswith(f"cannot load the classifier {damaged}: "), message
        assert ".export-" not in message and "ultralytics" not in message.lower()
    assert sorted(p.name for p in damaged.parent.iterdir()) == ["best.pt"]


def test_a_classifiers_file_given_as_model_is_said_to_be_a_classifier(tmp_path: Path) -> None:
    """`--model` given a classifier's weights or its ONNX export was said to be no registered
    model's file (the weights of a registered version, said to be unknown), where `--model`
    given the classifier's name says it is a classifier."""
    from db.models import ModelKind
    from tests.conftest import migrated
    from training.cli import app
    from training.export import export_classifier
    from training.versions import register_model_version

    url = get_settings().resolved_database_url
    migrated(url)
    weights = tmp_path / "verifier.pt"
    save_classifier(DefectClassifier("mobilenet_v3_small", [GOOD, *CLASSES]), weights, 32)
    with session_scope(url) as session:
        registered = register_model_version(
            session,
            weights,
            get_settings().models_dir,
            kind=ModelKind.CLASSIFIER,
            architecture="defect-cls-mobilenet_v3_small",
            class_names=[GOOD, *CLASSES],
            image_size=32,
            name="verifier",
        )
        stored = Path(registered.file_path)
    exported = export_classifier(stored, "verifier")
    foreign = tmp_path / "copied.onnx"  # an export copied away from the weights
    foreign.write_bytes(exported.read_bytes())
    make_images(tmp_path / "parts", n=1)
    part = str(tmp_path / "parts" / "part_000.png")
    runner = CliRunner()
    for model, what in [
        (weights, "the weights of classifier verifier"),
        (exported, "an export of classifier verifier"),
    ]:
        for command in (
            ["inspect", "--model", str(model), part],
            ["batch", str(tmp_path / "parts"), "--line", "L", "--station", "S"]
            + ["--model", str(model)],
        ):
            result = runner.invoke(app, command)
            assert result.exit_code != 0
            assert str(result.exception).startswith(f"{model} is {what}, not a detector: ")
    result = runner.invoke(app, ["inspect", "--model", str(foreign), part])
    assert str(result.exception).startswith(f"{foreign} is an export of classifier verifier")


def test_a_classifier_named_with_digits_is_the_one_the_operating_point_names(
    trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    """Stations looked the operating point's classifier up as an id or a name: a classifier
    named "1" was taken for the model version of id 1, here the detector itself."""
    from tests.conftest import migrated, register_classifier_copy, register_production_detector
    from training.cli import app

    url = get_settings().resolved_database_url
    migrated(url)
    register_production_detector(url, trained.weights, get_settings().models_dir)
    register_classifier_copy(trained.url, trained_classifier, url, name="1")
    with session_scope(url) as session:
        detector = get_model_version(session, "tiny")
        assert detector.id == 1
        detector.thresholds = {
            "per_class": dict.fromkeys(CLASSES, 1.01),
            "default": 1.01,
            "iou": 0.45,
            "classifier": {"version": "1", "part": 0.0, "verify": None},
        }
    make_images(tmp_path / "parts", n=1, seed=7)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "parts" / "part_000.png")])
    assert result.exit_code == 0, result.exception
    assert ": FAIL part classifier 0." in result.output


def test_a_classifier_version_named_with_digits_is_known_as_a_classifier(tmp_path: Path) -> None:
    """evaluate and export told a named version's kind by looking its name up as an id or a
    name: a classifier named "1" was taken for version 1, here a detector, and its damaged
    weights were then loaded as a detector's, not said as the classifier's."""
    from sqlalchemy import select

    from db.models import ModelKind, ModelVersion
    from tests.conftest import import_synthetic, migrated
    from training.cli import app

    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path, n=12)
    damaged = tmp_path / "verifier" / "best.pt"
    damaged.parent.mkdir()
    save_classifier(DefectClassifier("mobilenet_v3_small", [GOOD, *CLASSES]), damaged, 64)
    damaged.write_bytes(damaged.read_bytes()[:4096])  # cut short, as by a copy that failed
    with session_scope(url) as session:
        for name, kind, classes in [
            ("detector", ModelKind.DETECTOR, list(CLASSES)),
            ("1", ModelKind.CLASSIFIER, [GOOD, *CLASSES]),
        ]:
            session.add(
                ModelVersion(
                    name=name,
                    kind=kind,
                    architecture="a",
                    file_path=str(damaged),
                    sha256="0" * 64,
                    classes=classes,
                    thresholds={},
                )
            )
            session.flush()
        assert get_model_version(session, "detector").id == 1
        classifier_id = str(
            session.scalars(select(ModelVersion.id).where(ModelVersion.name == "1")).one()
        )
    runner = CliRunner()
    for command in (["evaluate", classifier_id, "--data", "synth"], ["export", classifier_id]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0
        message = str(result.exception)
        assert message.startswith(f"cannot load the classifier {damaged}: "), message


def test_a_hard_negative_detector_of_other_classes_is_refused_naming_both_lists(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--hard-negatives-from` a detector of other classes was refused as "X knows other
    classes than 'synth'", naming neither list (a teacher's refusal names both); refused
    before a job is recorded."""
    from sqlalchemy import delete, func, select

    from db.models import ModelKind, ModelVersion, TrainingJob
    from inspection.errors import UserError
    from training.cli import app
    from training.versions import register_model_version

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    other = [*reversed(CLASSES)]
    with session_scope(trained.url) as session:
        register_model_version(
            session,
            trained.weights,
            tmp_path / "models",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            class_names=other,
            image_size=64,
            name="other-det",
        )
        jobs = session.scalar(select(func.count(TrainingJob.id)))
    try:
        result = CliRunner().invoke(
            app,
            ["train", "classifier", "--data", "synth", "--hard-negatives-from", "other-det"],
        )
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, UserError), repr(result.exception)
        said = str(result.exception)
        assert "\n" not in said
        assert said.startswith(f"other-det knows {other}, 'synth' labels {list(CLASSES)}"), said
        with session_scope(trained.url) as session:
            assert session.scalar(select(func.count(TrainingJob.id))) == jobs  # refused before
    finally:
        with session_scope(trained.url) as session:  # (the session's database is shared)
            session.execute(delete(ModelVersion).where(ModelVersion.name == "other-det"))


@pytest.fixture
def synth_data(tmp_path: Path) -> str:
    """The synthetic dataset "synth" (8 images) imported in this test's own data folder, no
    detector trained: what a classifier's training alone needs. Its database URL."""
    from tests.conftest import import_synthetic, migrated

    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path / "synth", n=8)
    return url


def _tiny_classifier_request(**request: Any) -> Any:
    from training.train_classifier import ClassifierTrainRequest

    return ClassifierTrainRequest(
        **{
            "data": "synth",
            "backbone": "mobilenet_v3_small",
            "epochs": 1,
            "imgsz": 64,
            "batch": 8,
            "device": "cpu",
            **request,
        }
    )


def test_two_classifier_trainings_started_in_the_same_second_keep_their_own_weights(
    synth_data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run folder was named to the second: a second training of the same data and backbone
    started in that second wrote the same best.pt, and the first registered the second's
    weights. (The same second is simulated: the clock's stamp is held, and the second training
    runs while the first is about to register.)"""
    import training.train_classifier as module

    monkeypatch.setattr(module.time, "strftime", lambda fmt, *rest: "20260101-120000")
    register = module.register_model_version
    digest: dict[int, str] = {}  # (read as registered: a registered run keeps no best.pt)

    def second_one_first(session: Any, weights: Path, *args: Any, **kwargs: Any) -> Any:
        if not digest:
            # (Before the second run, which registers first.)
            digest[1] = hashlib.sha256(weights.read_bytes()).hexdigest()
            digest[2] = ""
            with monkeypatch.context() as inner:
                inner.setattr(module, "register_model_version", register)
                second = module.train_classifier(_tiny_classifier_request(seed=1), synth_data)
            with session_scope(synth_data) as other:
                second_file = Path(get_model_version(other, second).file_path)
            digest[2] = hashlib.sha256(second_file.read_bytes()).hexdigest()
        return register(session, weights, *args, **kwargs)

    monkeypatch.setattr(module, "register_model_version", second_one_first)
    first = module.train_classifier(_tiny_classifier_request(seed=0), synth_data)
    with session_scope(synth_data) as session:
        first_file = Path(get_model_version(session, first).file_path)
    mine = hashlib.sha256(first_file.read_bytes()).hexdigest()
    assert mine != digest[2] and mine == digest[1]  # (its own weights, not the second's)
    runs = sorted(p.name for p in (get_settings().runs_dir / "classify").iterdir())
    assert runs == [
        "synth-mobilenet_v3_small-20260101-120000",
        "synth-mobilenet_v3_small-20260101-120000-2",
    ]


def test_a_registered_classifier_keeps_one_copy_of_its_weights_and_its_history(
    synth_data: str,
) -> None:
    """A training that registered its version kept the run's best.pt beside the version's own
    copy in the model store, the same bytes twice (45 MB a resnet18): the run keeps its
    history, each epoch's loss and val accuracy, and the version the weights."""
    from training.train_classifier import train_classifier

    version_id = train_classifier(_tiny_classifier_request(epochs=2), synth_data)
    with session_scope(synth_data) as session:
        assert Path(get_model_version(session, version_id).file_path).is_file()
    (run,) = (get_settings().runs_dir / "classify").iterdir()
    assert [p.name for p in run.iterdir()] == ["results.csv"]
    lines = (run / "results.csv").read_text().splitlines()
    assert lines[0] == "epoch,loss,val_accuracy"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]


def test_a_stopped_classifier_training_leaves_no_weights_behind_and_says_so(
    synth_data: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped after its first epoch, it left runs/classify/RUN/best.pt, which nothing resumes
    or registers, and the stop message said nothing of it: the folder is removed and said."""
    from inspection.errors import Stopped
    from training.train_classifier import EpochProgress, train_classifier

    def pressed_in_the_second_epoch(self: EpochProgress, losses: list[float]) -> None:
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochProgress, "batch_done", pressed_in_the_second_epoch)
    with pytest.raises(Stopped):
        train_classifier(_tiny_classifier_request(epochs=2), synth_data)
    said = capsys.readouterr()
    assert "epoch 1/2" in said.out  # (the first epoch's best was saved)
    runs = get_settings().runs_dir / "classify"
    assert list(runs.iterdir()) == []
    assert "(its run folder synth-mobilenet_v3_small-" in said.err and "is removed)" in said.err


def test_a_failed_classifier_training_leaves_no_weights_behind(
    synth_data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training that failed after an epoch (here its registration) left its run's best.pt,
    which nothing registers: the same command trains it again from the start."""
    import training.train_classifier as module

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("registration failed")

    monkeypatch.setattr(module, "register_model_version", refused)
    with pytest.raises(RuntimeError, match="registration failed"):
        module.train_classifier(_tiny_classifier_request(), synth_data)
    assert list((get_settings().runs_dir / "classify").iterdir()) == []


@pytest.mark.parametrize("failing", ["full", "eio"])
def test_a_run_folder_that_fills_says_so_in_one_line(
    synth_data: str, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A disk that filled as an epoch's best was written stopped the training in torch's
    "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598": no errno, no
    folder, no word of what was kept. (The full disk is real: the weights are written through
    /dev/full, which refuses every write with ENOSPC.) A disk failing as that file took its
    name (EIO) ended in the system's bare "[Errno 5] Input/output error": it says to check it."""
    import errno
    import os

    from sqlalchemy import func, select

    import training.train_classifier as module
    from db.models import JobStatus, ModelVersion, TrainingJob
    from inspection.errors import UserError
    from training.cli import app

    made: list[Path] = []

    def on_a_full_disk(parent: Path, base: str) -> Path:
        run = new_run_folder(parent, base)
        for name in ("best.pt", f".best.pt.{os.getpid()}.partial"):  # (written either way)
            if failing == "full":
                (run / name).symlink_to("/dev/full")
        made.append(run)
        return run

    def rename_fails(source: object, target: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    new_run_folder = module.new_run_folder
    monkeypatch.setattr(module, "new_run_folder", on_a_full_disk)
    if failing == "eio":
        monkeypatch.setattr(os, "replace", rename_fails)
    args = ["train", "classifier", "--data", "synth", "--backbone", "mobilenet_v3_small"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--imgsz", "64", "--batch", "8"])
    assert isinstance(result.exception, UserError), repr(result.exception)
    said = str(result.exception)
    reason, fix = {
        "full": ("No space left", "free space there"),
        "eio": ("Input/output error", "check its disk"),
    }[failing]
    assert said.startswith(f"cannot write the training run's folder {made[0]}: {reason}")
    assert "nothing is registered" in said and "the folder is removed" in said
    assert said.endswith(f"{fix} and train again")
    assert not made[0].exists()
    with session_scope(synth_data) as session:
        assert session.scalar(select(func.count(ModelVersion.id))) == 0
        job = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert job is not None and job.status == JobStatus.FAILED
        assert reason in (job.error or "")


def test_a_damaged_dataset_image_is_named_when_a_classifier_trains(
    synth_data: str, tmp_path: Path
) -> None:
    """An image of the dataset damaged since its import (cut short) stopped the training in
    "corrupt or truncated image: image file is truncated", naming none of its images."""
    from inspection.errors import UserError
    from training.train_classifier import train_classifier

    root = get_settings().datasets_dir / "synth"
    damaged = split_image_paths(root, "val")[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(UserError, match=rf"dataset image {damaged} cannot be read: corrupt"):
        train_classifier(_tiny_classifier_request(), synth_data)
    assert list((get_settings().runs_dir / "classify").glob("*")) == []


def test_a_classifier_stopped_while_its_weights_are_copied_leaves_no_half_version(
    synth_data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while its weights were copied into the model store, it left a version's folder
    that no version names, holding half the weights' file, and the next one took NAME-2."""
    import training.versions as versions
    from inspection.errors import Stopped
    from training.train_classifier import train_classifier

    def stopped_half_way(source: Path, target: Path) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(versions.shutil, "copy2", stopped_half_way)
    with pytest.raises(Stopped):
        train_classifier(_tiny_classifier_request(), synth_data)
    assert list(get_settings().models_dir.glob("*")) == []


def test_a_training_whose_registration_commit_fails_after_it_was_made_succeeds(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dropped during the COMMIT of the registration, the server having
    committed: the job was recorded failed over its succeeded row, its version registered
    (`defects jobs` said failed for a job whose version exists). The database names the
    version: the training succeeds, and so does its job."""
    from tests.conftest import assert_training_stood_through_a_dropped_commit
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    request = ClassifierTrainRequest(
        data="synth",
        backbone="mobilenet_v3_small",
        epochs=1,
        imgsz=64,
        batch=8,
        device="cpu",
    )
    assert_training_stood_through_a_dropped_commit(
        trained.url, lambda: train_classifier(request, url=trained.url)
    )


def test_a_watch_told_of_a_point_without_its_classifier_names_the_one_it_judges_with(
    trained: Trained,
    trained_classifier: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A recalibration without --classifier while a watch judged with one was said as "now
    uses the classifier none, which this station has not loaded": the station has one loaded,
    and judges on with it."""
    from inspection.batch import BatchInspection

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        version = get_model_version(session, trained.version_name)
        before = dict(version.thresholds)
        version.thresholds = {
            **before,
            "classifier": {"version": trained_classifier, "part": None, "verify": 0.5},
        }
    job = BatchInspection(trained.url, tmp_path / "store", "L", "S", model=trained.version_name)
    try:
        with session_scope(trained.url) as session:
            get_model_version(session, trained.version_name).thresholds = {
                k: v for k, v in before.items() if k != "classifier"
            }
        caplog.clear()
        job._follow_stored_point()
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "classifier none" not in said
        assert (
            f"the operating point of {trained.version_name} names no classifier, and this "
            f"station judges with {trained_classifier}: it judges on at its earlier point"
        ) in said
        assert job.inspector.thresholds.classifier == trained_classifier  # (judges on with it)
    finally:
        job.inspector.close()
        with session_scope(trained.url) as session:
            get_model_version(session, trained.version_name).thresholds = before


def test_calibrate_given_a_detector_by_its_id_names_the_version_it_stored_on(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`defects calibrate 3 ...` ended "stored as the operating point of 3": the id as typed,
    where every other line names versions by name."""
    from training.cli import app
    from training.versions import default_thresholds

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    with session_scope(trained.url) as session:
        version_id = get_model_version(session, trained.version_name).id
    arguments = ["calibrate", str(version_id), "--data", "synth", "--max-miss-rate", "0.5"]
    try:
        result = CliRunner().invoke(app, arguments)
    finally:
        with session_scope(trained.url) as session:
            get_model_version(session, trained.version_name).thresholds = default_thresholds(
                CLASSES
            )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"stored as the operating point of {trained.version_name}" in said
    assert f"operating point of {version_id}\n" not in result.output


def test_a_classifier_on_a_split_without_good_parts_says_so_as_a_detector_does(
    trained: Trained, trained_classifier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier's evaluate on val (parts 1, 7, 13 and 19: all defective) printed
    "false-call rate - (0 of 0)", where a detector's says the split has no good parts."""
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    out = tmp_path / "val.json"
    args = ["evaluate", trained_classifier, "--data", "synth", "--split", "val"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "false-call rate: the split has no good parts" in text
    assert "(0 of 0)" not in text
    payload = json.loads(out.read_text())
    assert payload["false_call_rate"] is None and payload["n_good"] == 0
    # Every rate with its counts beside it, as a detector's JSON gives them.
    assert {"split", "n_images", "top1_accuracy", "per_class_recall", "confusion_matrix"} <= set(
        payload
    )
    assert {"part_threshold", "miss_rate", "n_defective", "n_missed", "n_false_calls"} <= set(
        payload
    )
    assert payload["n_images"] == 4


def test_per_class_recall_is_counted_after_crop_verification_as_the_part_figures_are(
    trained: Trained, trained_classifier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detector's evaluate at an operating point that verifies crops counted its part
    figures after verification and its per-class "recall at threshold" before it: a class
    whose every detection verification rejects was said to be found."""
    from training.cli import app
    from training.versions import default_thresholds

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    data = _labeled_with_its_own_detections(trained, tmp_path)
    low = {"per_class": {c: 0.001 for c in CLASSES}, "default": 0.001, "iou": 0.45}

    def evaluated(verify: float | None) -> tuple[dict[str, Any], str]:
        with session_scope(trained.url) as session:
            get_model_version(session, trained.version_name).thresholds = {
                **low,
                "classifier": {"version": trained_classifier, "part": None, "verify": verify},
            }
        out = tmp_path / f"{verify}.json"
        args = ["evaluate", trained.version_name, "--data", data, "--split", "val"]
        try:
            result = CliRunner().invoke(app, [*args, "--json", str(out)])
        finally:
            with session_scope(trained.url) as session:
                get_model_version(session, trained.version_name).thresholds = default_thresholds(
                    CLASSES
                )
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text()), " ".join(result.output.split())

    unverified, _ = evaluated(None)
    assert any(row["recall"] for row in unverified["per_class"].values())
    for row in unverified["per_class"].values():  # (each rate with its counts beside it)
        assert row["recall"] == (row["n_found"] / row["n_boxes"] if row["n_boxes"] else None)
    # No crop reaches 1.0: verification rejects every detection, and every part is passed.
    verified, text = evaluated(1.0)
    assert verified["n_missed"] == verified["n_defective"] > 0
    for name, row in verified["per_class"].items():
        assert set(row) == set(unverified["per_class"][name])  # (the keys scripts read)
        assert row["n_boxes"] == unverified["per_class"][name]["n_boxes"]
        assert row["recall"] == (0.0 if row["n_boxes"] else None)
    assert verified["recall_after_verification"] == 1.0
    assert "recall at threshold counts the detections crop verification at 1 keeps" in text


def _labeled_with_its_own_detections(trained: Trained, tmp_path: Path) -> str:
    """The synthetic parts labeled with the tiny detector's most confident detection each (a
    part where it finds nothing a good part), imported as "echo": one epoch finds none of the
    real defects, and on these it finds every labeled box."""
    import shutil

    from inspection.detector import load_detector
    from tests.synthetic import SyntheticImage, write_splits
    from training.datasets import import_dataset

    model = load_detector(trained.weights)
    root, src = trained.data_dir / "datasets" / "synth", tmp_path / "echo"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    images: list[SyntheticImage] = []
    for image in sorted((root / "images").glob("*/*.png"), key=lambda p: p.name):
        shutil.copy(image, src / "images" / image.name)
        [found] = model.predict(str(image), conf=0.001, imgsz=64, verbose=False)
        boxes: list[tuple[str, int, int, int, int]] = []
        if len(found.boxes):
            best = int(found.boxes.conf.argmax())
            x1, y1, x2, y2 = (int(round(v)) for v in found.boxes.xyxy[best].tolist())
            boxes.append(
                (CLASSES[int(found.boxes.cls[best])], x1, y1, max(x2, x1 + 2), max(y2, y1 + 2))
            )
            objects = "".join(
                f"<object><name>{c}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                f"<xmax>{c2}</xmax><ymax>{d}</ymax></bndbox></object>"
                for c, a, b, c2, d in boxes
            )
            (src / "annotations" / f"{image.stem}.xml").write_text(
                f"<annotation><filename>{image.name}</filename><size><width>64</width>"
                f"<height>64</height><depth>3</depth></size>{objects}</annotation>"
            )
        images.append(SyntheticImage(image.name, 64, boxes))
    with session_scope(trained.url) as session:
        import_dataset(
            session,
            "voc",
            src,
            "echo",
            get_settings().datasets_dir,
            write_splits(tmp_path / "echo-splits", images),
            CLASSES,
            replace=True,
        )
    return "echo"

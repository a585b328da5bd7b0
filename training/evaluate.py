"""Evaluation of a detector on a split: box mAP from ultralytics' validator, and the part-level
figures QA works with at the model's operating thresholds.

A part (image) is *defective* when it has at least one labeled box and *good* when it has none.
It is *flagged* when at least one prediction reaches its class's threshold.
miss rate = defective parts not flagged / defective parts;
false-call rate = good parts flagged / good parts (only where the split has good parts).
On a tiled dataset, mAP and per-class figures are over its tile images, as ultralytics measures
them, while a part is its source image: flagged when any of its tiles is (merging a station's
overlapping tiles only removes duplicates, so any tile that fires fails the part), defective
when its image had a labeled box.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

import inspection  # noqa: F401 - runtime preparation first
from db.queries import PartCounts
from db.registry import get_model_version, named_version
from db.session import session_scope
from inspection.backends.base import read_tile
from inspection.detector import load_detector
from inspection.errors import UserError
from inspection.settings import get_settings
from inspection.tiling import TileSpec, tile_of_checkpoint, tile_of_metadata
from training.datasets import (
    TileOrigin,
    dataset_tile,
    dataset_yaml,
    grid_mismatch,
    group_by_part,
    refuse_tiled_for_classifier,
    split_image_paths,
    tile_origins,
)
from training.versions import default_thresholds, weights_file

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.models import ModelVersion

MATCH_IOU = 0.5


PartRates = PartCounts  # the part-level figures, as the history queries count them


def part_rates(outcomes: list[tuple[bool, bool]]) -> PartRates:
    """From (defective, flagged) pairs, one per part."""
    n_defective = sum(1 for defective, _ in outcomes if defective)
    n_missed = sum(1 for defective, flagged in outcomes if defective and not flagged)
    n_good = len(outcomes) - n_defective
    n_false = sum(1 for defective, flagged in outcomes if not defective and flagged)
    return PartRates(n_defective, n_missed, n_good, n_false)


def part_outcomes(
    images: list[Path], flagged: list[bool], origins: dict[str, TileOrigin]
) -> list[tuple[bool, bool]]:
    """(defective, flagged) per part from each tile's flag: a part is flagged when any of its
    tiles is, defective when its source image had a labeled box."""
    return [
        (defective, any(flagged[i] for i in indices))
        for _, defective, indices in group_by_part(images, origins)
    ]


def class_threshold(thresholds: dict[str, Any], class_name: str) -> float:
    per_class = thresholds.get("per_class", {})
    return float(per_class.get(class_name, thresholds.get("default", 0.25)))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
    return inter / np.maximum(area + areas - inter, 1e-9)


def matched_boxes(
    truth: np.ndarray,
    truth_classes: np.ndarray,
    pred: np.ndarray,
    pred_classes: np.ndarray,
    pred_conf: np.ndarray,
) -> np.ndarray:
    """Which labeled boxes are found: greedy one-to-one matching by confidence, same class, IoU >= 0.5."""
    found = np.zeros(len(truth), dtype=bool)
    for i in np.argsort(-pred_conf):
        candidates = np.where(~found & (truth_classes == pred_classes[i]))[0]
        if len(candidates) == 0:
            continue
        ious = _iou(pred[i], truth[candidates])
        best = int(np.argmax(ious))
        if ious[best] >= MATCH_IOU:
            found[candidates[best]] = True
    return found


@dataclass
class DetectorEvaluation:
    split: str
    n_images: int  # parts: on a tiled dataset, its source images (`extra["n_tiles"]` the tiles)
    map50: float | None  # None where the split has no labeled box: no AP to measure
    map50_95: float | None
    rates: PartRates
    per_class: dict[str, dict[str, float | int | None]]
    thresholds: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def miss_rate(self) -> float | None:
        return self.rates.miss_rate

    def to_json(self) -> dict[str, Any]:
        """The stable keys scripts depend on, plus the counts behind each rate."""
        return {
            "split": self.split,
            "n_images": self.n_images,
            "map50": self.map50,
            "map50_95": self.map50_95,
            **self.rates.as_dict(),
            "per_class": self.per_class,
            "thresholds": self.thresholds,
            **self.extra,
        }


def _labels(
    root: Path, split: str, image: Path, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    label_file = root / "labels" / split / f"{image.stem}.txt"
    rows = (
        [line.split() for line in label_file.read_text().splitlines() if line.strip()]
        if label_file.exists()
        else []
    )
    if not rows:
        return np.zeros((0, 4)), np.zeros(0, dtype=int)
    values = np.array(rows, dtype=float)
    cx, cy, w, h = (
        values[:, 1] * width,
        values[:, 2] * height,
        values[:, 3] * width,
        values[:, 4] * height,
    )
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, values[:, 0].astype(int)


def _predict_in_chunks(model: Any, images: list[Path], batch: int, **options: Any) -> Iterator[Any]:
    """ultralytics' predict, one call per batch of files: streaming one long list of files
    through a single call holds on to memory for every image seen (on the CPU, a 640 px model
    ran a 24 GB machine out of memory on 1000 parts); one call per batch stays flat."""
    for start in range(0, len(images), batch):
        chunk = [str(p) for p in images[start : start + batch]]
        yield from model.predict(source=chunk, stream=True, verbose=False, batch=batch, **options)


def classes_hint(model_names: list[str]) -> str:
    """What to do where a dataset's classes are not a model's: a VOC subset (a few NEU-DET
    images) is imported with the classes its boxes name, sorted, unless told the model's."""
    return (
        "use data labeled with the model's classes in its order (a VOC import takes them "
        f"with `--classes {','.join(model_names)}`, `--replace` to import it again)"
    )


def evaluate_detector(
    weights: Path,
    data: str,
    split: str = "test",
    thresholds: dict[str, Any] | None = None,
    imgsz: int | None = None,
    batch: int = 16,
    device: str = "cpu",
    url: str | None = None,
) -> DetectorEvaluation:
    url = url or get_settings().resolved_database_url
    with session_scope(url) as session:
        dataset, data_yaml = dataset_yaml(session, data)
        class_names = list(dataset.classes)
        root = data_yaml.parent
    if Path(weights).suffix == ".onnx":
        model, model_names, trained_size, fixed_batch, model_tile = _onnx_detector(Path(weights))
        batch = fixed_batch or batch
    else:
        model = load_detector(weights)
        model_names = [model.names[i] for i in sorted(model.names)]
        ckpt = model.ckpt if isinstance(model.ckpt, dict) else {}
        trained_size = int(ckpt.get("train_args", {}).get("imgsz", 640))
        model_tile = read_tile(Path(weights), lambda: tile_of_checkpoint(ckpt))
    if model_names != class_names:
        raise UserError(
            f"the model's classes {model_names} are not the dataset's {class_names}: "
            + classes_hint(model_names)
        )
    thresholds = thresholds or default_thresholds(class_names)
    imgsz = imgsz or trained_size
    images = split_image_paths(root, split)
    origins = tile_origins(root)
    classifier_point = thresholds.get("classifier") or {}
    if origins is not None and classifier_point.get("version"):
        raise UserError(
            f"{data!r} is a tiled dataset and the operating point names classifier "
            f"{classifier_point['version']}: part figures with a classifier are measured on "
            "whole images only; evaluate on a dataset of whole images, or the detector at an "
            "operating point without a classifier"
        )
    classifier_weights = None
    if classifier_point.get("version"):  # (looked up before the validation, not after it)
        with session_scope(url) as session:
            # (Said as every command says a version's missing weights, with what to copy
            # where: this one named the path alone.)
            classifier_weights = weights_file(named_version(session, classifier_point["version"]))

    with tempfile.TemporaryDirectory() as scratch:
        metrics = model.val(
            data=str(data_yaml),
            split=split,
            imgsz=imgsz,
            batch=batch,
            device=device,
            conf=0.001,
            iou=0.7,
            plots=False,
            verbose=False,
            project=scratch,
            name="val",
        )
    ap50 = dict(zip(metrics.box.ap_class_index, metrics.box.ap50, strict=True))
    ap = dict(zip(metrics.box.ap_class_index, metrics.box.ap, strict=True))

    # Crop verification drops the detections the classifier does not confirm, before a station
    # counts them: the per-class recall is counted after it, as the part figures are (it was
    # counted before, so a class whose every crop was rejected read as found).
    verify = classifier_point.get("verify") if classifier_weights is not None else None
    verifier = None
    if verify is not None:
        from inspection.engine import PartClassifier

        verifier = PartClassifier(classifier_weights, device)  # type: ignore[arg-type]
    lowest = min(class_threshold(thresholds, c) for c in class_names)
    outcomes: list[tuple[bool, bool]] = []
    found_per_class = np.zeros(len(class_names), dtype=int)
    total_per_class = np.zeros(len(class_names), dtype=int)
    limits = np.array([class_threshold(thresholds, c) for c in class_names])
    for result in _predict_in_chunks(
        model,
        images,
        imgsz=imgsz,
        conf=min(lowest, 1.0),  # (1.01 stands for off: ultralytics refuses it; 1.0 finds none)
        iou=float(thresholds.get("iou", 0.45)),
        device=device,
        batch=batch,
    ):
        height, width = result.orig_shape
        truth, truth_classes = _labels(root, split, Path(result.path), width, height)
        boxes = result.boxes
        pred = boxes.xyxy.cpu().numpy()
        pred_classes = boxes.cls.cpu().numpy().astype(int)
        conf = boxes.conf.cpu().numpy()
        keep = conf >= limits[pred_classes] if len(conf) else np.zeros(0, dtype=bool)
        pred, pred_classes, conf = pred[keep], pred_classes[keep], conf[keep]
        if verifier is not None and len(pred):
            confirmed = _verified(verifier, Path(result.path), pred) >= float(verify)
            pred, pred_classes, conf = pred[confirmed], pred_classes[confirmed], conf[confirmed]
        outcomes.append((len(truth) > 0, len(pred) > 0))
        found = matched_boxes(truth, truth_classes, pred, pred_classes, conf)
        np.add.at(total_per_class, truth_classes, 1)
        np.add.at(found_per_class, truth_classes[found], 1)

    extra: dict[str, Any] = {"imgsz": imgsz, "weights": weights.name}
    if verify is not None:
        extra["recall_after_verification"] = float(verify)
    n_parts = len(images)
    if origins is not None:
        outcomes = part_outcomes(images, [flagged for _, flagged in outcomes], origins)
        n_parts = len(outcomes)
        tile = dataset_tile(root)
        # (mAP, AP and recall are the tiles'; the part figures and n_images count parts.)
        extra.update(n_tiles=len(images), tile=tile.to_json() if tile else None)
        mismatch = grid_mismatch(model_tile, tile, data)
        if mismatch is not None:
            extra["grid_warning"] = mismatch
    rates = part_rates(outcomes)
    # ultralytics reports mAP 0.0 for a split without a labeled box: no figure, not a bad one.
    labeled = bool(total_per_class.sum())
    # A tiled model judging whole images (a dataset imported without --tile): stations cut
    # each one by its grid, and ultralytics shrank it whole, so its part figures were not a
    # station's (nor calibrate's, which judges as stations do).
    in_tiles = origins is None and model_tile is not None
    if classifier_weights is not None or in_tiles:
        # The operating point names a classifier (calibrated with one), or the model judges in
        # tiles: the part figures are those of the whole verdict as a station gives it, the
        # classifier's part probability and crop verification included, as calibrate counted
        # them (they were the detector's alone, so the two commands disagreed on the same
        # split). mAP stays the detector's, as ultralytics measures it; per-class recall
        # counts the detections crop verification keeps (above).
        rates = _rates_as_judged(
            weights, root, split, class_names, thresholds, classifier_weights, device
        )
        if classifier_weights is not None:
            extra["part_figures_with_classifier"] = classifier_point["version"]
        if in_tiles:
            assert model_tile is not None
            extra["part_figures_in_tiles"] = model_tile.to_json()

    per_class = {
        name: {
            "ap50": float(ap50[i]) if i in ap50 else None,
            "ap50_95": float(ap[i]) if i in ap else None,
            "recall": float(found_per_class[i] / total_per_class[i])
            if total_per_class[i]
            else None,
            "n_boxes": int(total_per_class[i]),
            "n_found": int(found_per_class[i]),  # (the recall's count, as each rate has its own)
            "threshold": float(limits[i]),
        }
        for i, name in enumerate(class_names)
    }
    return DetectorEvaluation(
        split=split,
        n_images=n_parts,
        map50=float(metrics.box.map50) if labeled else None,
        map50_95=float(metrics.box.map) if labeled else None,
        rates=rates,
        per_class=per_class,
        thresholds=thresholds,
        extra=extra,
    )


def _verified(verifier: Any, image: Path, boxes: np.ndarray) -> np.ndarray:
    """Each box's crop defect probability, cut from the image as stations cut it."""
    from inspection.classifier import crop_with_context
    from inspection.images import decode_image

    pixels = decode_image(image.read_bytes()).pixels
    crops = [crop_with_context(pixels, tuple(float(v) for v in box)) for box in boxes]
    return np.asarray(verifier.defect_probabilities(crops))


def _rates_as_judged(
    weights: Path,
    root: Path,
    split: str,
    class_names: list[str],
    thresholds: dict[str, Any],
    classifier_weights: Path | None,
    device: str,
) -> PartRates:
    """Part figures of a verdict as the engine gives it (with its classifier, in its model's
    tiles), scored as calibration scores them."""
    import math

    from training.calibrate import PART, SCORE_FLOOR, apply_thresholds, score_parts

    classifier_point = (
        (thresholds.get("classifier") or {}) if classifier_weights is not None else {}
    )
    verify = classifier_point.get("verify")
    scored = score_parts(
        root,
        split,
        weights,
        class_names,
        classifier_weights,
        float(thresholds.get("iou", 0.45)),
        device,
        SCORE_FLOOR if verify is not None else math.inf,
    )
    part = classifier_point.get("part")
    limits = {c: class_threshold(thresholds, c) for c in class_names}
    limits[PART] = float(part) if part is not None else math.inf
    counts = apply_thresholds([p.scores(verify) for p in scored], limits)
    return PartRates(counts.n_defective, counts.n_missed, counts.n_good, counts.n_false_calls)


def _onnx_detector(weights: Path) -> tuple[Any, list[str], int, int | None, TileSpec | None]:
    """An exported detector (fp32, INT8...) run by ultralytics through ONNX Runtime, so that an
    export's figures are measured exactly as its checkpoint's are. Returns the model, its
    classes, its image size, its batch size when the file fixes one and its grid."""
    import onnx
    from ultralytics import YOLO

    from inspection.backends.onnx_backend import class_names_from_metadata

    if not weights.is_file():
        raise UserError(f"model file not found: {weights}")
    try:
        proto = onnx.load(str(weights), load_external_data=False)
    except Exception as exc:  # onnx raises protobuf's own errors for a damaged file
        raise UserError(f"cannot read the ONNX model {weights.name}: {exc}") from exc
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("defects.architecture", "").startswith("defect-cls-"):
        raise UserError(
            f"{weights.name} is a classifier: evaluate a classifier from its .pt checkpoint"
        )
    names = class_names_from_metadata(meta)
    if not names:
        raise UserError(f"{weights.name} does not say its classes: export it with `defects export`")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    size = dims[-1].dim_value or int(meta.get("defects.imgsz", "640"))
    tile = read_tile(weights, lambda: tile_of_metadata(meta))
    return YOLO(str(weights), task="detect"), names, size, dims[0].dim_value or None, tile


class ResolvedModel(NamedTuple):
    weights: Path
    thresholds: dict[str, Any] | None
    version_name: str | None  # where the reference named a version (its figures are stored)
    note: str | None = None  # a line to show, e.g. that an export's thresholds are stale


def resolve_model(ref: str, url: str) -> ResolvedModel:
    """A weights file, or a model version's file and operating thresholds."""
    path = Path(ref)
    if path.suffix in {".pt", ".onnx"} and path.exists():
        # A file is measured at its model's own operating point, not at default thresholds:
        # a version's weights and exports are known by their hash, name or folder.
        thresholds, note = _file_thresholds(path, url)
        return ResolvedModel(path, thresholds, None, note)  # (a file's figures are not stored)
    if path.suffix in {".pt", ".onnx"}:
        raise UserError(f"model file not found: {ref}")
    with session_scope(url) as session:
        version = get_model_version(session, ref)
        return ResolvedModel(weights_file(version), dict(version.thresholds), version.name)


def _file_thresholds(path: Path, url: str) -> tuple[dict[str, Any] | None, str | None]:
    """The thresholds a model file is judged at: those of the registered version it is the
    weights or an export of (as they are now: `calibrate` and the Settings page change them
    after an export), else an export's metadata; None where neither says (default thresholds
    then); and a line to show where the export's own thresholds are not the version's."""
    import json

    from sqlalchemy import select

    from db.models import ModelVersion
    from inspection.batch import sha256_of
    from training.export import METADATA_PREFIX, read_metadata

    if path.suffix == ".onnx":
        meta = read_metadata(path)
        stored = json.loads(meta.get(METADATA_PREFIX + "thresholds") or "{}")
        with session_scope(url) as session:
            version = _version_of_export(session, path, meta.get(METADATA_PREFIX + "model_version"))
            if version is None:
                return stored or None, None
            name, current = version.name, dict(version.thresholds)
        if stored == json.loads(json.dumps(current)):
            return current, None
        return (
            current,
            f"{path.name} holds other thresholds than {name}'s current ones: evaluated at the "
            f"current ones; the export is stale: export it again (`defects export {name}`) so "
            "that stations running that file judge at the new thresholds",
        )
    digest = sha256_of(path)
    with session_scope(url) as session:
        version = session.scalars(
            select(ModelVersion).where(ModelVersion.sha256 == digest).order_by(ModelVersion.id)
        ).first()
        return (dict(version.thresholds) if version is not None else None), None


def _version_of_export(session: Session, path: Path, named: str | None) -> ModelVersion | None:
    """The registered detector an ONNX file belongs to (as inspection finds it for --model)."""
    from inspection.batch import detector_of_file

    return detector_of_file(session, path, named)


@dataclass
class ClassifierEvaluation:
    split: str
    class_names: list[str]
    confusion: list[list[int]]  # rows: truth, columns: prediction
    rates: PartRates
    part_threshold: float

    @property
    def accuracy(self) -> float:
        matrix = np.array(self.confusion)
        return float(np.trace(matrix) / max(matrix.sum(), 1))

    def per_class_recall(self) -> dict[str, float | None]:
        matrix = np.array(self.confusion)
        return {
            name: (float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None)
            for i, name in enumerate(self.class_names)
        }

    def to_json(self) -> dict[str, Any]:
        """The keys of a detector's where they mean the same (`n_images`, the rates and the
        counts behind each), and the classifier's own."""
        return {
            "split": self.split,
            "n_images": int(np.array(self.confusion).sum()),
            "top1_accuracy": self.accuracy,
            "per_class_recall": self.per_class_recall(),
            "confusion_matrix": {
                "classes": self.class_names,
                "rows_truth_columns_prediction": self.confusion,
            },
            "part_threshold": self.part_threshold,
            **self.rates.as_dict(),
        }


def evaluate_classifier(
    weights: Path,
    data: str,
    split: str = "test",
    part_threshold: float = 0.5,
    device: str = "cpu",
    url: str | None = None,
) -> ClassifierEvaluation:
    """Whole-part classification: top-1 against the part's main defect class, and the part-level
    miss and false-call rates when a part fails at defect probability >= part_threshold."""
    import torch

    from inspection.classifier import load_classifier, resize_square
    from training.train_classifier import part_label, read_split

    url = url or get_settings().resolved_database_url
    with session_scope(url) as session:
        dataset, data_yaml = dataset_yaml(session, data)
        root, dataset_classes = data_yaml.parent, list(dataset.classes)
    refuse_tiled_for_classifier(root, data, "evaluate")
    model, image_size = load_classifier(weights, device)
    if list(model.class_names[1:]) != dataset_classes:  # (its first class is "good")
        raise UserError(
            f"the classifier knows {model.class_names[1:]}, {data!r} labels "
            f"{dataset_classes}: evaluate it on a dataset of its own classes"
        )
    images, boxes = read_split(root, split)
    n = len(model.class_names)
    confusion = np.zeros((n, n), dtype=int)
    outcomes: list[tuple[bool, bool]] = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            chunk = images[start : start + 64]
            batch = torch.from_numpy(np.stack([resize_square(p, image_size) for p in chunk])).to(
                device
            )
            probabilities = torch.softmax(model(batch), dim=1).cpu().numpy()
            for probs, found in zip(probabilities, boxes[start : start + 64], strict=True):
                truth = part_label(found)
                confusion[truth, int(probs.argmax())] += 1
                outcomes.append((truth != 0, 1.0 - float(probs[0]) >= part_threshold))
    return ClassifierEvaluation(
        split, model.class_names, confusion.tolist(), part_rates(outcomes), part_threshold
    )


def detection_map(
    predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    truths: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[float, float]:
    """(mAP50, mAP50-95) of any detector's output, scored by ultralytics' own matching and AP code
    so that our engine and ultralytics' predict are measured with the same ruler.

    predictions: per image (boxes xyxy, confidences, classes); truths: per image (boxes, classes).
    """
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    with tempfile.TemporaryDirectory() as scratch:
        validator = DetectionValidator(save_dir=Path(scratch))
    correct, confidences, predicted, targets = [], [], [], []
    for (boxes, conf, classes), (truth_boxes, truth_classes) in zip(
        predictions, truths, strict=True
    ):
        if len(boxes) and len(truth_boxes):
            iou = box_iou(
                torch.as_tensor(truth_boxes, dtype=torch.float32),
                torch.as_tensor(boxes, dtype=torch.float32),
            )
            hits = validator.match_predictions(
                torch.as_tensor(classes, dtype=torch.float32),
                torch.as_tensor(truth_classes, dtype=torch.float32),
                iou,
            ).numpy()
        else:
            hits = np.zeros((len(boxes), 10), dtype=bool)
        correct.append(hits)
        confidences.append(np.asarray(conf, dtype=float))
        predicted.append(np.asarray(classes, dtype=float))
        targets.append(np.asarray(truth_classes, dtype=float))
    if not any(len(t) for t in targets):
        return 0.0, 0.0
    ap = ap_per_class(
        np.concatenate(correct),
        np.concatenate(confidences),
        np.concatenate(predicted),
        np.concatenate(targets),
    )[5]
    return float(ap[:, 0].mean()), float(ap.mean())


def split_truths(root: Path, split: str) -> tuple[list[Path], list[tuple[np.ndarray, np.ndarray]]]:
    """The images of a split and their labeled boxes in pixels."""
    from PIL import Image

    images = split_image_paths(root, split)
    truths = []
    for image in images:
        with Image.open(image) as opened:
            width, height = opened.size
        truths.append(_labels(root, split, image, width, height))
    return images, truths

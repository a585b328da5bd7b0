"""The defect classifier on NEU-DET: a ResNet-18 teacher, a MobileNetV3 student trained (a) alone
and (b) distilled from the teacher (Hinton KL + FPN features), same data, schedule and seed; then
the part verdict of the shipped detector alone and with the classifier, at thresholds calibrated
on val, on the 180 test parts (every NEU-DET part is defective).

    python bench/classifier_neu.py --epochs 30 --imgsz 128

Writes bench/results/classifier_neu.json: top-1 accuracy against the file-name class and against
the labelled main class, per-class recall, parameters, GFLOPs and CPU latency of each classifier,
and the verdict's misses on test with their upper confidence bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "classifier_neu"
os.environ["DEFECTS_DATA_DIR"] = str(WORK)  # before the product reads its settings
sys.path.insert(0, str(ROOT))

from common import compare_verdicts, ensure_neu, hardware  # noqa: E402

import inspection  # noqa: E402,F401
from db.migrate import upgrade  # noqa: E402
from db.registry import get_model_version  # noqa: E402
from db.session import session_scope  # noqa: E402
from inspection.settings import get_settings  # noqa: E402


def file_name_accuracy(weights: Path, root: Path, split: str, defect_classes: list[str]) -> float:
    """Top-1 against the class in the file name (NEU-DET's own image-level label)."""
    import numpy as np
    import torch

    from inspection.classifier import load_classifier, resize_square
    from inspection.images import decode_image
    from training.datasets import IMAGE_SUFFIXES

    model, image_size = load_classifier(weights, "cpu")
    paths = sorted(
        p for p in (root / "images" / split).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
    )
    correct = 0
    with torch.no_grad():
        for start in range(0, len(paths), 64):
            chunk = paths[start : start + 64]
            batch = np.stack(
                [resize_square(decode_image(p.read_bytes()).pixels, image_size) for p in chunk]
            )
            predicted = model(torch.from_numpy(batch)).argmax(dim=1).tolist()
            for path, index in zip(chunk, predicted, strict=True):
                truth = path.stem.rsplit("_", 1)[0]
                correct += int(index > 0 and defect_classes[index - 1] == truth)
    return correct / max(len(paths), 1)


def cost(weights: Path) -> dict[str, float]:
    """Parameters, GFLOPs (torch's own counter, 2 per multiply-add) and CPU latency at batch 1."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from inspection.classifier import load_classifier

    model, image_size = load_classifier(weights, "cpu")
    sample = torch.rand(1, 3, image_size, image_size)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(sample)
        for _ in range(5):
            model(sample)
        runs, started = 50, time.perf_counter()
        for _ in range(runs):
            model(sample)
        latency = (time.perf_counter() - started) / runs * 1000
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops": round(counter.get_total_flops() / 1e9, 3),
        "cpu_latency_ms_batch1": round(latency, 2),
    }


def earlier_classifiers(url: str, args: argparse.Namespace) -> dict[str, tuple[int, float]]:
    """The classifiers of this bench's last run (its working database and result file), so that
    a new detector's verdict is measured without training them again; empty if there are none."""
    from sqlalchemy import select

    from db.models import ModelKind, ModelVersion

    if not args.out.is_file():
        return {}
    earlier = json.loads(args.out.read_text())
    if earlier.get("schedule", {}).get("teacher") != args.teacher:
        return {}
    found: dict[str, tuple[int, float]] = {}
    with session_scope(url) as session:
        rows = session.scalars(
            select(ModelVersion)
            .where(ModelVersion.kind == ModelKind.CLASSIFIER)
            .order_by(ModelVersion.id.desc())
        ).all()
    for label, architecture, distilled in (
        ("teacher", args.teacher, False),
        ("student_alone", args.student, False),
        ("student_distilled", args.student, True),
    ):
        match = next(
            (
                v
                for v in rows
                if v.architecture in (architecture, f"defect-cls-{architecture}")
                and (v.teacher_id is not None) == distilled
            ),
            None,
        )
        if match is None:
            return {}
        seconds = earlier["classifiers"].get(label, {}).get("train_wall_s", 0.0)
        found[label] = (match.id, seconds)
    args.epochs = earlier["schedule"]["epochs"]  # the schedule they were trained with
    args.imgsz = earlier["schedule"]["imgsz"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument(
        "--detector", type=Path, default=ROOT / "models" / "neu-det-demo" / "weights.pt"
    )
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student", default="mobilenet_v3_small")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--verdict-classifier",
        choices=["teacher", "student_alone", "student_distilled"],
        default="student_distilled",
        help="the classifier that joins the detector for the part verdict",
    )
    parser.add_argument("--max-miss-rate", type=float, default=0.0)
    parser.add_argument(
        "--reuse-trained",
        action="store_true",
        help="keep the classifiers of the last run (for a new --detector); train if there are none",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "classifier_neu.json"
    )
    args = parser.parse_args()
    from training.calibrate import score_parts
    from training.evaluate import evaluate_classifier
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    url = get_settings().resolved_database_url
    upgrade(url)
    defect_classes = ensure_neu(url, args.neu)
    root = get_settings().datasets_dir / "neu-det"
    common = {
        "data": "neu-det",
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "seed": args.seed,
        "device": args.device,
    }
    trained = earlier_classifiers(url, args) if args.reuse_trained else {}
    reused = bool(trained)
    if not trained:
        for label, backbone in (("teacher", args.teacher), ("student_alone", args.student)):
            started = time.perf_counter()
            version = train_classifier(ClassifierTrainRequest(backbone=backbone, **common), url=url)
            trained[label] = (version, time.perf_counter() - started)
        with session_scope(url) as session:
            teacher_name = get_model_version(session, trained["teacher"][0]).name
        started = time.perf_counter()
        version = train_classifier(
            ClassifierTrainRequest(backbone=args.student, teacher=teacher_name, **common), url=url
        )
        trained["student_distilled"] = (version, time.perf_counter() - started)

    classifiers: dict[str, dict] = {}
    weights_of: dict[str, Path] = {}
    for label, (version, seconds) in trained.items():
        with session_scope(url) as session:
            weights_of[label] = Path(get_model_version(session, version).file_path)
        evaluation = evaluate_classifier(weights_of[label], "neu-det", "test", url=url).to_json()
        classifiers[label] = {
            "backbone": args.teacher if label == "teacher" else args.student,
            "top1_file_name_class": file_name_accuracy(
                weights_of[label], root, "test", defect_classes
            ),
            "top1_main_labelled_class": evaluation["top1_accuracy"],
            "per_class_recall": evaluation["per_class_recall"],
            "confusion_matrix": evaluation["confusion_matrix"],
            "parts_called_good_at_0.5": evaluation["n_missed"],
            **cost(weights_of[label]),
            "train_wall_s": round(seconds, 1),
        }
        print(
            label,
            json.dumps({k: v for k, v in classifiers[label].items() if k != "confusion_matrix"}),
        )
    classifiers["distilled_minus_alone_top1"] = (
        classifiers["student_distilled"]["top1_file_name_class"]
        - classifiers["student_alone"]["top1_file_name_class"]
    )

    val = score_parts(
        root, "val", args.detector, defect_classes, weights_of[args.verdict_classifier]
    )
    test = score_parts(
        root, "test", args.detector, defect_classes, weights_of[args.verdict_classifier]
    )
    verdicts = compare_verdicts(val, test, defect_classes, args.max_miss_rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "dataset": "NEU-DET, fixed split (test: 180 parts, all defective)",
                "schedule": {
                    "epochs": args.epochs,
                    "imgsz": args.imgsz,
                    "batch": args.batch,
                    "seed": args.seed,
                    "teacher": args.teacher,
                    "student": args.student,
                },
                "hardware": hardware(),
                "detector": args.detector.relative_to(ROOT).as_posix()
                if args.detector.is_relative_to(ROOT)
                else args.detector.name,
                "classifiers": classifiers,
                "classifiers_from_an_earlier_run": reused,  # their train_wall_s are that run's
                "verdict_classifier": args.verdict_classifier,
                "target_max_miss_rate": args.max_miss_rate,
                "verdicts": verdicts,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

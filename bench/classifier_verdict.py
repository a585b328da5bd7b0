"""Part verdicts on DeepPCB: detector alone, classifier alone, and both, at thresholds calibrated
to a target miss rate on part of trainval, reported on the authors' test split (500 defective
`_test` images + their 500 defect-free `_temp` templates).

    python bench/classifier_verdict.py --epochs 100 --imgsz 640 --device 0

Writes bench/results/classifier_verdict.json. Schedules are arguments: a CPU smoke run is
`--epochs 1 --imgsz 320 --fraction 0.05`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "classifier_verdict"
os.environ["DEFECTS_DATA_DIR"] = str(WORK)  # before the product reads its settings
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    cached_json,
    cached_scores,
    calibration_cross_check,
    compare_verdicts,
    describe_stages,
    hardware,
    oracle_on_test,
    total_wall_seconds,
    training_stages,
)

import inspection  # noqa: E402,F401
from db.migrate import upgrade  # noqa: E402
from db.registry import get_model_version  # noqa: E402
from db.session import session_scope  # noqa: E402
from inspection.settings import get_settings  # noqa: E402
from training.calibrate import score_parts  # noqa: E402
from training.datasets import DEEPPCB_CLASSES as CLASSES  # noqa: E402
from training.datasets import import_dataset  # noqa: E402


def ensure_dataset(url: str, root: Path) -> None:
    """DeepPCB imported as `defects import deeppcb` does (the authors' test split as test,
    every fifth trainval board as val), once."""
    from sqlalchemy import select

    from db.models import Dataset

    with session_scope(url) as session:
        if session.scalars(select(Dataset).where(Dataset.name == "deeppcb")).first():
            return
        report = import_dataset(session, "deeppcb", root, "deeppcb", get_settings().datasets_dir)
        print("imported DeepPCB:", report.split_counts, len(report.issues), "issues")


def new_designs(dataset_root: Path, deeppcb: Path) -> list[bool]:
    """For each test part, in the order `score_parts` scores them, whether its board design
    (the authors' group) is absent from trainval: val is drawn from trainval's designs, so it
    says nothing of how new designs score, and two thirds of the test boards are of new ones."""
    from training.datasets import IMAGE_SUFFIXES

    def group_of(line: str) -> tuple[str, str]:
        listed = line.split()[0]  # groupG/G/N.jpg
        return Path(listed).stem, listed.split("/")[0]

    trainval = dict(group_of(line) for line in (deeppcb / "trainval.txt").open())
    test = dict(group_of(line) for line in (deeppcb / "test.txt").open())
    seen = set(trainval.values())
    images = sorted(
        p
        for p in (dataset_root / "images" / "test").iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
    )
    return [test[path.stem.split("_")[0]] not in seen for path in images]


def _verify_note(result: dict) -> str:
    if "verify" not in result:
        return ""
    verify = result["verify"]
    return (
        " (verification off: it cut no false call)"
        if verify is None
        else f" (crop >= {verify:.3f})"
    )


def _bracket(other: dict, name: str, key: str) -> str:
    return str(other.get("setups", {}).get(name, {}).get(key, "-"))


def markdown(summary: dict) -> str:
    """The result file as a short table for people."""
    schedule, test = summary["schedule"], summary["detector_test"]
    rows = "\n".join(
        f"| {name}{_verify_note(r)} | {r['test']['n_missed']} ({r['test']['miss_rate']:.3f}, upper "
        f"{r['test']['miss_rate_upper_95']:.3f}) | {r['test']['n_false_calls']} "
        f"({r['test']['false_call_rate']:.3f}, upper {r['test']['false_call_rate_upper_95']:.3f}) |"
        for name, r in summary["results"].items()
    )
    oracle = "; ".join(
        f"{name} {r['n_missed']} missed at {r['n_false_calls']} false calls"
        + (f" (crop >= {r['verify']:.3f})" if r.get("verify") is not None else "")
        for name, r in summary.get("oracle_on_test", {}).items()
    )
    misses = "".join(
        f"- {name}, the defective parts it passed on test: "
        f"{r['test_misses']['not_found_by_the_detector']} not found by the detector, "
        f"{r['test_misses']['found_but_rejected_by_verification']} found but rejected by "
        f"verification (best crop probabilities {r['test_misses']['best_rejected_crop_probabilities']}).\n"
        for name, r in summary["results"].items()
        if "test_misses" in r
    )
    subsets = "".join(
        f"- {name}: "
        + "; ".join(
            f"{subset} {c['n_missed']} missed of {c['n_defective']}, {c['n_false_calls']} "
            f"false calls of {c['n_good']}"
            for subset, c in r["test_subsets"].items()
        )
        + "\n"
        for name, r in summary["results"].items()
        if "test_subsets" in r
    )
    subsets = (
        "The same thresholds on the test boards of designs in the training set and of designs "
        f"new to the model (val holds only the first kind):\n\n{subsets}\n"
        if subsets
        else ""
    )
    check = summary.get("val_cross_check")
    on_faintest = summary.get("val_cross_check_thresholds_on_the_faintest_defect", {})
    counted = next(iter(check["setups"].values())) if check else {}
    cross_check = (
        ""
        if check is None
        else "Calibrated on one half of val and counted on the other (both ways, "
        f"{check['repeats']} different halvings; no test part involved), missed of "
        f"{counted['n_defective']} and false calls of {counted['n_good']}, with each threshold in the middle "
        "of its gap to the next good part (as calibrated) and, in brackets, left on the "
        "faintest caught defect:\n\n"
        + "".join(
            f"- {name}: {r['n_missed']} missed ({_bracket(on_faintest, name, 'n_missed')}), "
            f"{r['n_false_calls']} false calls ({_bracket(on_faintest, name, 'n_false_calls')})\n"
            for name, r in check["setups"].items()
        )
    )
    wall = summary["train_wall_s"]
    share = schedule.get("fraction", 1.0)
    fraction = f" on {share:.0%} of the training images" if share < 1 else ""
    return f"""# Part verdicts on {summary["dataset"]}

Detector {schedule["detector"]}, {describe_stages(schedule["detector_stages"])}{fraction} (test mAP50
{test["map50"]:.3f}, mAP50-95 {test["map50_95"]:.3f}); classifier {schedule["classifier"]},
{describe_stages(schedule["classifier_stages"])}; {summary["hardware"]};
training wall time: detector {wall["detector"]} s, classifier {wall["classifier"]} s. Thresholds
calibrated on val (200 defective + 200 good parts) for a miss rate of at most
{summary["target_max_miss_rate"]}, reported on test.

| setup | missed of 500 defective | false calls of 500 good |
| --- | --- | --- |
{rows}

{misses}
{subsets}{cross_check}
With thresholds chosen on test itself (not a result: nothing held out; what calibration on a
larger split could reach at best, the rest needs a better model): {oracle}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--deeppcb", type=Path, default=ROOT.parent / "shared" / "datasets" / "deeppcb" / "PCBData"
    )
    parser.add_argument("--detector", default="defect-yolo-s")
    parser.add_argument("--classifier", default="resnet18")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--classifier-epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--classifier-imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=2, help="detector data-loading processes")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "classifier_verdict.json"
    )
    parser.add_argument("--max-miss-rate", type=float, default=0.002)
    parser.add_argument(
        "--hard-negatives",
        action="store_true",
        help="train the classifier with the detector's false detections on train as good crops",
    )
    parser.add_argument(
        "--detector-version",
        type=int,
        default=None,
        help="reuse a detector trained by a former run",
    )
    parser.add_argument(
        "--classifier-version", type=int, default=None, help="reuse a former run's classifier"
    )
    args = parser.parse_args()
    from training.train_classifier import ClassifierTrainRequest, train_classifier
    from training.train_detector import TrainRequest, train_detector

    url = get_settings().resolved_database_url
    upgrade(url)
    ensure_dataset(url, args.deeppcb)
    detector_id, classifier_id = args.detector_version, args.classifier_version
    if detector_id is None:
        detector_id = train_detector(
            TrainRequest(
                data="deeppcb",
                architecture=args.detector,
                epochs=args.epochs,
                imgsz=args.imgsz,
                batch=args.batch,
                device=args.device,
                workers=args.workers,
                extra=(("fraction", args.fraction),),
            ),
            url=url,
        )
    if classifier_id is None:
        classifier_id = train_classifier(
            ClassifierTrainRequest(
                data="deeppcb",
                backbone=args.classifier,
                epochs=args.classifier_epochs,
                imgsz=args.classifier_imgsz,
                device=args.device,
                hard_negatives_from=str(detector_id) if args.hard_negatives else None,
            ),
            url=url,
        )
    with session_scope(url) as session:
        detector = get_model_version(session, detector_id)
        classifier = get_model_version(session, classifier_id)
        root = Path(get_settings().datasets_dir / "deeppcb")
        detector_path, classifier_path = Path(detector.file_path), Path(classifier.file_path)
    device = (
        None
        if args.device in (None, "cpu")
        else f"cuda:{args.device}"
        if args.device.isdigit()
        else args.device
    )
    from training.evaluate import evaluate_detector

    detection = cached_json(
        WORK / f"detector-test-{detector_id}.json",
        lambda: evaluate_detector(
            detector_path, "deeppcb", "test", device=device or "cpu", url=url
        ).to_json(),
    )
    print("detector on test:", {k: detection[k] for k in ("map50", "map50_95")})
    val, test = (
        cached_scores(
            WORK / f"scores-{detector_id}-{classifier_id}-{split}.json",
            lambda split=split: score_parts(
                root, split, detector_path, CLASSES, classifier_path, device=device
            ),
        )
        for split in ("val", "test")
    )
    new_design = new_designs(root, args.deeppcb)
    results = compare_verdicts(
        val,
        test,
        CLASSES,
        args.max_miss_rate,
        {
            "boards of designs in the training set": [not new for new in new_design],
            "boards of designs new to the model": new_design,
        },
    )
    detector_stages = training_stages(url, detector_id)
    classifier_stages = training_stages(url, classifier_id)
    summary = {
        "dataset": "DeepPCB (test: 500 defective + 500 good parts)",
        "hardware": hardware(),
        "target_max_miss_rate": args.max_miss_rate,
        # Read from the training runs, not the arguments: a reused or fine-tuned model keeps the
        # schedule it was really trained with.
        "schedule": {
            "detector": detector_stages[0]["architecture"] if detector_stages else args.detector,
            "epochs": sum(stage["epochs"] for stage in detector_stages) or args.epochs,
            "imgsz": detector_stages[-1]["imgsz"] if detector_stages else args.imgsz,
            "fraction": args.fraction,
            "detector_stages": detector_stages,
            "classifier": classifier_stages[0]["architecture"]
            if classifier_stages
            else args.classifier,
            "classifier_epochs": sum(s["epochs"] for s in classifier_stages)
            or args.classifier_epochs,
            "classifier_imgsz": classifier_stages[-1]["imgsz"]
            if classifier_stages
            else args.classifier_imgsz,
            "classifier_stages": classifier_stages,
        },
        "train_wall_s": {
            "detector": total_wall_seconds(detector_stages),
            "classifier": total_wall_seconds(classifier_stages),
        },
        "detector_test": {k: detection[k] for k in ("map50", "map50_95", "per_class")},
        "results": results,
        "oracle_on_test": oracle_on_test(test, CLASSES, args.max_miss_rate),
        "val_cross_check": calibration_cross_check(val, CLASSES, args.max_miss_rate),
        "val_cross_check_thresholds_on_the_faintest_defect": calibration_cross_check(
            val, CLASSES, args.max_miss_rate, centre=False
        ),
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    out.with_suffix(".md").write_text(markdown(summary))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

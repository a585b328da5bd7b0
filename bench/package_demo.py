"""Package a trained NEU-DET detector as the demo model shipped in `models/neu-det-demo/`:
weights, ONNX, operating thresholds calibrated on the val split, test metrics, model card.
The card's figures are also written to `bench/results/package_demo.json`.

    python bench/package_demo.py --weights PATH/best.pt --schedule "40 epochs at 256 px" --hardware "2 CPU cores"
    python bench/package_demo.py --check   # the shipped weights measured again: results file only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.mkdtemp(prefix="defects-demo-"))
os.environ["DEFECTS_DATA_DIR"] = str(WORK)  # before the product reads its settings
sys.path.insert(0, str(ROOT))

from common import ensure_neu  # noqa: E402

import inspection  # noqa: E402,F401
from db.migrate import upgrade  # noqa: E402
from db.models import ModelKind  # noqa: E402
from db.session import session_scope  # noqa: E402
from inspection.settings import get_settings  # noqa: E402
from training.calibrate import calibrate_model  # noqa: E402
from training.evaluate import evaluate_detector  # noqa: E402
from training.export import export_detector  # noqa: E402
from training.versions import register_model_version  # noqa: E402

DEMO = ROOT / "models" / "neu-det-demo"


def without_machine_paths(value: object) -> object:
    """ultralytics records its training arguments in the checkpoint (data file, run folder,
    teacher weights) as absolute paths of the machine that trained it; a shipped file keeps
    only their file names."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(without_machine_paths(item) for item in value)
    if isinstance(value, str) and (value.startswith("/") or value[1:3] in {":\\", ":/"}):
        return Path(value.replace("\\", "/")).name
    return value


def ship_weights(source: Path, target: Path) -> None:
    import torch

    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    for key in ("train_args", "git"):
        if key in checkpoint:
            checkpoint[key] = without_machine_paths(checkpoint[key])
    for model in (checkpoint.get("model"), checkpoint.get("ema")):
        # (pt_path: the file a fine-tuned model was loaded from, kept on the module)
        for attribute in ("args", "yaml", "pt_path"):
            if model is not None and isinstance(getattr(model, attribute, None), dict | str):
                setattr(model, attribute, without_machine_paths(getattr(model, attribute)))
    checkpoint.pop("optimizer", None)
    torch.save(checkpoint, target)


RESULTS = ROOT / "bench" / "results" / "package_demo.json"


def card_figures(
    name: str, parameters: int, thresholds: dict[str, Any], evaluation: dict[str, Any]
) -> dict[str, Any]:
    """Every figure the model card prints, as the card rounds it: what the results file holds
    for the card to cite."""
    calibration = thresholds["calibration"]
    return {
        "name": name,
        "parameters_millions": round(parameters / 1e6, 2),
        "test": {
            "map50": round(evaluation["map50"], 3),
            "map50_95": round(evaluation["map50_95"], 3),
            "n_missed": evaluation["n_missed"],
            "n_defective": evaluation["n_defective"],
            "miss_rate": round(evaluation["miss_rate"], 4),
            "per_class": {
                cls: {key: round(row[key], 3) for key in ("ap50", "recall", "threshold")}
                for cls, row in evaluation["per_class"].items()
            },
        },
        "val_calibration": {
            "max_miss_rate": calibration["max_miss_rate"],
            "n_missed": calibration["n_missed"],
            "n_defective": calibration["n_defective"],
            "miss_rate_upper_95": round(calibration["miss_rate_upper_95"], 3),
            "class_thresholds": calibration.get("class_thresholds"),
        },
    }


def write_results(figures: dict[str, Any], shipped: dict[str, Any] | None = None) -> None:
    """The card's figures into bench/results; with `shipped`, those the card was built with
    beside them, and whether they agree."""
    from common import hardware

    result: dict[str, Any] = {"measured": figures, "hardware": hardware()}
    if shipped is not None:
        result["shipped_card"] = shipped
        result["same_as_shipped_card"] = figures == shipped
        print("same as the shipped card:", figures == shipped)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="default with --check: the shipped weights")
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--name", default="neu-det-demo-v3")
    parser.add_argument("--schedule", help="how it was trained, for the model card")
    parser.add_argument("--hardware")
    parser.add_argument(
        "--check",
        action="store_true",
        help="measure the shipped demo again (calibration on val, test figures) and write only "
        "the results file, each figure beside the one the card shipped with",
    )
    parser.add_argument(
        "--origin",
        default="from scratch (no pretrained weights)",
        help="for the model card: where training started",
    )
    parser.add_argument("--max-miss-rate", type=float, default=0.0)
    args = parser.parse_args()
    if args.check:
        shipped = json.loads((DEMO / "model.json").read_text())
        args.weights = args.weights or DEMO / "weights.pt"
        args.name = shipped["name"]
        args.max_miss_rate = shipped["thresholds"]["calibration"]["max_miss_rate"]
    elif args.weights is None or args.schedule is None or args.hardware is None:
        parser.error("--weights, --schedule and --hardware are needed to package a demo")
    from ultralytics import YOLO

    url = get_settings().resolved_database_url
    upgrade(url)
    ensure_neu(url, args.neu)
    model = YOLO(str(args.weights))
    classes = [model.names[i] for i in sorted(model.names)]
    imgsz = int(model.ckpt["train_args"]["imgsz"])
    architecture = str(model.model.yaml.get("architecture", "unknown"))
    with session_scope(url) as session:
        register_model_version(
            session,
            args.weights,
            get_settings().models_dir,
            kind=ModelKind.DETECTOR,
            architecture=architecture,
            class_names=classes,
            image_size=imgsz,
            name=args.name,
        )
    stored = calibrate_model(url, args.name, "neu-det", "val", args.max_miss_rate)
    thresholds = stored.operating_point
    evaluation = evaluate_detector(
        args.weights, "neu-det", "test", thresholds=thresholds, url=url
    ).to_json()
    parameters = sum(p.numel() for p in model.model.parameters())
    figures = card_figures(args.name, parameters, thresholds, evaluation)
    if args.check:
        shipped_figures = card_figures(
            shipped["name"], parameters, shipped["thresholds"], shipped["metrics"]
        )
        write_results(figures, shipped=shipped_figures)
        shutil.rmtree(WORK, ignore_errors=True)
        return
    write_results(figures)
    DEMO.mkdir(parents=True, exist_ok=True)
    ship_weights(args.weights, DEMO / "weights.pt")
    onnx_path = export_detector(
        DEMO / "weights.pt",
        imgsz=imgsz,
        dynamic=True,
        thresholds=thresholds,
        version_name=args.name,
    )
    if onnx_path != DEMO / "weights.onnx":
        shutil.move(onnx_path, DEMO / "weights.onnx")
    metrics = {
        k: evaluation[k]
        for k in ("map50", "map50_95", "miss_rate", "n_missed", "n_defective", "per_class")
    }
    (DEMO / "model.json").write_text(
        json.dumps(
            {
                "name": args.name,
                "architecture": architecture,
                "classes": classes,
                "imgsz": imgsz,
                "thresholds": thresholds,
                "metrics": metrics,
                "dataset": "NEU-DET (fixed split)",
                "schedule": args.schedule,
                "hardware": args.hardware,
            },
            indent=2,
        )
    )
    per_class_rows = "\n".join(
        f"| {name} | {row['ap50']:.3f} | {row['recall']:.3f} | {row['threshold']:.3f} |"
        for name, row in evaluation["per_class"].items()
    )
    calibration = thresholds["calibration"]
    card = f"""# Model card: {args.name}

**A demo for steel-strip surface defects, trained on a research dataset. Retrain it on your own
parts before trusting its verdicts on your line** (`defects import`, `defects train detector
--from {args.name}`, `defects calibrate`).

- Architecture: `{architecture}` (YOLOv5-style CSP backbone, PAN-FPN neck, channel + spatial
  attention at the P3/P4 levels), {parameters / 1e6:.2f} M parameters, input {imgsz} px.
- Data: NEU-DET (Northeastern University surface defect database; research use), 1800 grayscale
  200x200 images of hot-rolled steel strip, 6 classes, the fixed split: train 1440, val 180,
  test 180 (every image holds at least one defect: there are no good parts).
- Training: {args.schedule}, on {args.hardware}, {args.origin}.
- Files: `weights.pt` (ultralytics checkpoint), `weights.onnx` (dynamic batch; class names,
  thresholds and the SHA-256 of `weights.pt`, the weights it was exported from, in its metadata;
  gives the same detections as the weights, checked by the tests).

## Test split (180 images)

mAP50 **{evaluation["map50"]:.3f}**, mAP50-95 {evaluation["map50_95"]:.3f}. At the shipped thresholds:
{evaluation["n_missed"]} of {evaluation["n_defective"]} defective parts missed (miss rate {evaluation["miss_rate"]:.4f}).

| class | AP50 | recall at threshold | threshold |
| --- | --- | --- | --- |
{per_class_rows}

## Operating thresholds

Calibrated on the val split for a part miss rate of at most {args.max_miss_rate}: {calibration["n_missed"]} of
{calibration["n_defective"]} missed there (95% upper bound {calibration["miss_rate_upper_95"]:.3f}), with
{"one threshold shared by every class (a per-class threshold learned from about 30 val parts of its class lets through about 1 in 31 new defects of that class; one learned from all 180 parts, about 1 in 181)" if calibration.get("class_thresholds") == "shared" else "a threshold per class"}.
On the test split these thresholds missed {evaluation["n_missed"]} of {evaluation["n_defective"]} parts: a threshold set just
under the lowest-scoring of {calibration["n_defective"]} calibration parts leaves roughly one new part in
{calibration["n_defective"] + 1} below it, so 0 misses on val does not promise 0 on new parts. For a stricter escape
target, calibrate on more of your own parts (`defects calibrate`). NEU-DET has
no defect-free images, so the false-call rate of these thresholds is unknown: on real production
with mostly good parts, expect many false calls until the model is retrained and calibrated on
your own good and defective parts.
"""
    (DEMO / "MODEL_CARD.md").write_text(card)
    print(card)
    print("thresholds:", {k: v for k, v in thresholds["per_class"].items() if math.isfinite(v)})
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()

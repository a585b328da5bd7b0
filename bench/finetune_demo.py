"""The shipped demo student retrained with a stronger teacher: does the demo get better?

    python bench/finetune_demo.py --teacher-weights bench/results/weights/defect-yolo-s-200e256.pt \
        --hours 2 --method feature
    python bench/finetune_demo.py --method none --start-weights demo_v2.pt --epochs 66 \
        --out bench/results/finetune_demo_no_teacher.json   # the same retraining, no teacher

The demo (n-scale, distilled from a 100-epoch teacher) is the start (`--from`), the teacher a
larger model trained longer; both are registered in a work folder of this bench's own, the
student is trained as `defects distill detector --from` trains it, and the demo and the result
are evaluated on the NEU-DET test split side by side. A gain here mixes more training with a
better teacher: it answers "is there a better demo to ship"; `--method none` (the same
retraining with no teacher, from the same start) answers "how much does the teacher add".
Writes bench/results/finetune_demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "finetune_demo"
os.environ["DEFECTS_DATA_DIR"] = str(WORK)  # before the product reads its settings
sys.path.insert(0, str(ROOT))

from common import ensure_neu, hardware  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import inspection  # noqa: E402,F401
from db.migrate import upgrade  # noqa: E402
from db.models import ModelKind, ModelVersion  # noqa: E402
from db.registry import get_model_version  # noqa: E402
from db.session import session_scope  # noqa: E402
from inspection.settings import get_settings  # noqa: E402
from training.versions import register_model_version  # noqa: E402


def evaluated(weights: Path, url: str) -> dict:
    """Test-split figures at ultralytics' default 0.25, the same for both models."""
    from training.evaluate import evaluate_detector

    result = evaluate_detector(weights, "neu-det", "test", url=url).to_json()
    keep = ("map50", "map50_95", "miss_rate", "n_missed", "n_defective")
    return {key: result[key] for key in keep} | {
        "per_class_ap50": {name: row["ap50"] for name, row in result["per_class"].items()}
    }


def registered(session: Session, weights: Path, architecture: str, imgsz: int) -> ModelVersion:
    """The model version of a weights file, registered in this bench's folder when new."""
    from ultralytics import YOLO

    from inspection.batch import sha256_of

    digest = sha256_of(weights)
    known = session.scalars(select(ModelVersion).where(ModelVersion.sha256 == digest)).first()
    if known is not None:
        return known
    names = YOLO(str(weights)).names
    return register_model_version(
        session,
        weights,
        get_settings().models_dir,
        kind=ModelKind.DETECTOR,
        architecture=architecture,
        class_names=[names[i] for i in sorted(names)],
        image_size=imgsz,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--teacher-weights", type=Path, default=None, help="not with --method none")
    parser.add_argument(
        "--start-weights",
        type=Path,
        default=None,
        help="the model to retrain (default: the shipped demo), e.g. an earlier demo's weights",
    )
    parser.add_argument("--teacher-arch", default="defect-yolo-s")
    parser.add_argument(
        "--method", choices=["feature", "cwd", "none"], default="feature", help="none: no teacher"
    )
    parser.add_argument("--hours", type=float, default=None, help="wall-time budget of training")
    parser.add_argument("--epochs", type=int, default=60, help="without --hours")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument(
        "--retrained",
        default=None,
        help="a version this bench trained already (its work folder): evaluated, not trained again",
    )
    parser.add_argument(
        "--train-wall-s", type=float, default=None, help="with --retrained: its training's time"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "finetune_demo.json"
    )
    args = parser.parse_args()
    if (args.method == "none") != (args.teacher_weights is None):
        parser.error("--teacher-weights is needed with a teacher's method, and not with none")
    from training.demo import install_demo
    from training.train_detector import TrainRequest, train_detector

    settings = get_settings()
    url = settings.resolved_database_url
    upgrade(url)
    ensure_neu(url, args.neu)
    with session_scope(url) as session:
        if args.start_weights is None:
            demo = install_demo(session, settings.models_dir)
            start_version = get_model_version(session, demo.version_name)
        else:
            start_version = registered(session, args.start_weights, "defect-yolo-n", args.imgsz)
        demo_name, demo_weights = start_version.name, Path(start_version.file_path)
        teacher_name = teacher_weights = None
        if args.teacher_weights is not None:
            teacher = registered(session, args.teacher_weights, args.teacher_arch, args.imgsz)
            teacher_name, teacher_weights = teacher.name, Path(teacher.file_path)
    start = time.perf_counter()
    version_id = args.retrained or train_detector(
        TrainRequest(
            data="neu-det",
            from_model=demo_name,
            teacher=teacher_name,
            distill_method="feature" if args.method == "none" else args.method,
            epochs=args.epochs,
            hours=args.hours,
            imgsz=args.imgsz,
            batch=args.batch,
            device=args.device,
            workers=args.workers,
        ),
        url=url,
    )
    wall = args.train_wall_s if args.retrained else time.perf_counter() - start
    with session_scope(url) as session:
        version = get_model_version(session, version_id)
        student_weights, trained = Path(version.file_path), dict(version.metrics or {})
    results = {
        **({"teacher": evaluated(teacher_weights, url)} if teacher_weights else {}),
        "demo": evaluated(demo_weights, url),
        "retrained": evaluated(student_weights, url)
        | {"epochs": trained.get("epochs"), "train_wall_s": round(wall, 1)},
    }
    results["retrained_minus_demo_map50"] = results["retrained"]["map50"] - results["demo"]["map50"]
    for label, row in results.items():
        print(label, row)
    args.out.write_text(
        json.dumps(
            {
                "schedule": vars(args) | {"neu": "NEU-DET", "out": args.out.name},
                "hardware": hardware(),
                "retrained_weights": str(student_weights.relative_to(ROOT)),
                "results": results,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

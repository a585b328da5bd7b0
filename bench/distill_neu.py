"""Distillation on NEU-DET: the n-scale student trained (a) alone and (b) distilled from an
attention teacher, same data, schedule and seed; test mAP50, mAP50-95, part miss rate,
parameters, GFLOPs and CPU latency of each (and of the teacher).

    python bench/distill_neu.py --teacher-arch defect-yolo-s --epochs 100 --device 0
    python bench/distill_neu.py --teacher-weights path/to/teacher.pt --epochs 40   # reuse a teacher
    python bench/distill_neu.py ... --methods feature cwd   # ultralytics' feature loss and our CWD
    python bench/distill_neu.py ... --methods cwd --reuse teacher=1 student_alone=2 student_distilled=3
        # train only the CWD student; the rest are model versions of a former run (same work dir)

Writes bench/results/distill_neu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "distill_neu"
os.environ["DEFECTS_DATA_DIR"] = str(WORK)  # before the product reads its settings
sys.path.insert(0, str(ROOT))

from common import ensure_neu, hardware, total_wall_seconds, training_stages  # noqa: E402

import inspection  # noqa: E402,F401
from db.migrate import upgrade  # noqa: E402
from db.models import ModelKind  # noqa: E402
from db.registry import get_model_version  # noqa: E402
from db.session import session_scope  # noqa: E402
from inspection.settings import get_settings  # noqa: E402
from training.versions import register_model_version  # noqa: E402


def cpu_latency_ms(weights: Path, imgsz: int, runs: int = 50) -> float:
    import numpy as np

    from inspection.engine import Inspector

    inspector = Inspector.from_weights(weights, None, "pytorch", "cpu", 1)
    tensor = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(5):
        inspector.backend.infer(tensor)
    start = time.perf_counter()
    for _ in range(runs):
        inspector.backend.infer(tensor)
    return (time.perf_counter() - start) / runs * 1000


def describe(weights: Path, imgsz: int, url: str) -> dict:
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    from training.evaluate import evaluate_detector

    model = YOLO(str(weights))
    result = evaluate_detector(weights, "neu-det", "test", url=url).to_json()
    return {
        "weights": str(weights.relative_to(ROOT)),
        "map50": result["map50"],
        "map50_95": result["map50_95"],
        "miss_rate": result["miss_rate"],
        "n_missed": result["n_missed"],
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "gflops": round(get_flops(model.model, imgsz), 3),
        "cpu_latency_ms_batch1": round(cpu_latency_ms(weights, imgsz), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--teacher-arch", default="defect-yolo-s")
    parser.add_argument(
        "--teacher-weights", type=Path, default=None, help="an already trained teacher"
    )
    parser.add_argument("--student", default="defect-yolo-n")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distill_neu.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=["feature", "cwd"],
        default=["feature"],
        help="distillation losses to train a student with: ultralytics' feature L2, our CWD",
    )
    parser.add_argument(
        "--reuse",
        nargs="+",
        default=[],
        metavar="LABEL=VERSION",
        help="take a row (teacher, student_alone, student_distilled, student_distilled_cwd) from a "
        "model version a former run of this script trained, instead of training it again",
    )
    args = parser.parse_args()
    reused = dict(item.split("=", 1) for item in args.reuse)
    from training.train_detector import TrainRequest, train_detector

    url = get_settings().resolved_database_url
    upgrade(url)
    ensure_neu(url, args.neu)
    common = {
        "data": "neu-det",
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "device": args.device,
        "seed": args.seed,
        "workers": args.workers,
        "extra": (("fraction", args.fraction),),
    }
    timings = {}
    if "teacher" in reused:
        with session_scope(url) as session:
            teacher_id = get_model_version(session, reused["teacher"]).id
    elif args.teacher_weights:
        with session_scope(url) as session:
            from ultralytics import YOLO

            names = YOLO(str(args.teacher_weights)).names
            teacher = register_model_version(
                session,
                args.teacher_weights,
                get_settings().models_dir,
                kind=ModelKind.DETECTOR,
                architecture=args.teacher_arch,
                class_names=[names[i] for i in sorted(names)],
                image_size=args.imgsz,
            )
            teacher_id = teacher.id
    else:
        start = time.perf_counter()
        teacher_id = train_detector(TrainRequest(architecture=args.teacher_arch, **common), url=url)
        timings["teacher"] = time.perf_counter() - start
    with session_scope(url) as session:
        teacher_name = get_model_version(session, teacher_id).name
    versions = {"teacher": teacher_id}
    if "student_alone" not in reused:
        start = time.perf_counter()
        versions["student_alone"] = train_detector(
            TrainRequest(architecture=args.student, **common), url=url
        )
        timings["student_alone"] = time.perf_counter() - start
    for label, ref in reused.items():
        with session_scope(url) as session:
            versions[label] = get_model_version(session, ref).id
        # A reused row's wall time is that of the run that trained it.
        timings[label] = total_wall_seconds(training_stages(url, ref))
    for method in args.methods:
        # "student_distilled" is ultralytics' built-in feature distillation, as in earlier files.
        label = "student_distilled" + ("" if method == "feature" else f"_{method}")
        if label in reused:
            continue
        start = time.perf_counter()
        versions[label] = train_detector(
            TrainRequest(
                architecture=args.student, teacher=teacher_name, distill_method=method, **common
            ),
            url=url,
        )
        timings[label] = time.perf_counter() - start
    results = {}
    for label, version_id in versions.items():
        with session_scope(url) as session:
            weights = Path(get_model_version(session, version_id).file_path)
        # None: a teacher given as weights, or a reused model whose training time is unknown.
        wall = timings.get(label)
        results[label] = {
            **describe(weights, args.imgsz, url),
            "train_wall_s": None if wall is None else round(wall, 1),
        }
        print(label, results[label])
    for label in [k for k in versions if k.startswith("student_distilled")]:
        suffix = label.removeprefix("student_distilled")
        results[f"distilled{suffix}_minus_alone_map50"] = (
            results[label]["map50"] - results["student_alone"]["map50"]
        )
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "schedule": vars(args)
                | {
                    "neu": "NEU-DET",
                    "teacher_weights": str(args.teacher_weights),
                    "out": out.name,
                    "reused": {label: versions[label] for label in reused},
                },
                "hardware": hardware(),
                "results": results,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""NEU-DET detector benchmark: n and s scales, with and without attention, on the fixed split.

    python bench/detector_neu.py --phase train --scales n s --epochs 100   # then
    python bench/detector_neu.py --phase evaluate

Training and evaluation are separate phases so that a long CPU schedule can run in the
background; both keep their state in a work folder of their own (not the user's database).
Writes bench/results/detector_neu.json and detector_neu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "detector_neu"
RESULTS = ROOT / "bench" / "results"
os.environ["DEFECTS_DATA_DIR"] = str(WORK)  # before the product reads its settings
sys.path.insert(0, str(ROOT))

from common import ensure_neu, hardware  # noqa: E402

import inspection  # noqa: E402,F401
from db.migrate import upgrade  # noqa: E402
from db.registry import get_model_version  # noqa: E402
from db.session import session_scope  # noqa: E402
from inspection.settings import get_settings  # noqa: E402

# The attention model, its twin without, and attention with identity-at-start gates.
VARIANT_SUFFIX = {"attention": "", "plain": "-plain", "gated": "-gated"}


def record_trained(key: str, entry: dict) -> None:
    """Add one trained model to the work folder's state; runs side by side each add their own,
    so the file is read and written again under a lock, never from a copy read at start."""
    import fcntl

    state_file = WORK / "trained.json"
    with (WORK / "trained.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        state[key] = entry
        state_file.write_text(json.dumps(state, indent=2))


def train_side_by_side(args: argparse.Namespace, pending: list[tuple[str, str]]) -> None:
    """Each (scale, variant) in a process of its own, all at once: a small model at 256 px
    leaves a large GPU mostly idle between its steps (data loading, validation, logging)."""
    import subprocess

    common = ["--phase", "train", "--neu", str(args.neu), "--epochs", str(args.epochs)]
    common += ["--imgsz", str(args.imgsz), "--batch", str(args.batch), "--seed", str(args.seed)]
    common += ["--workers", str(args.workers), "--beside", str(len(pending) - 1)]
    common += ["--device", args.device] if args.device is not None else []
    children = [
        subprocess.Popen(
            [sys.executable, __file__, *common, "--scales", scale, "--variants", variant]
        )
        for scale, variant in pending
    ]
    failed = [f"{s}/{v}" for (s, v), child in zip(pending, children, strict=True) if child.wait()]
    if failed:
        sys.exit(f"side-by-side training failed for {', '.join(failed)}")


def run_key(architecture: str, args: argparse.Namespace) -> str:
    """A training run's name in the results; another seed is another run (seed 0 unnamed, as
    the runs before seeds were told apart)."""
    return f"{architecture}@{args.epochs}e{args.imgsz}" + (f"-seed{args.seed}" if args.seed else "")


def train_phase(args: argparse.Namespace, url: str) -> None:
    from training.train_detector import TrainRequest, train_detector

    state_file = WORK / "trained.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    pending = []
    for scale in args.scales:
        for variant in args.variants:
            key = run_key(f"defect-yolo-{scale}{VARIANT_SUFFIX[variant]}", args)
            if key in state:
                print(f"{key}: already trained")
            else:
                pending.append((scale, variant))
    if args.parallel and len(pending) > 1:
        train_side_by_side(args, pending)
        return
    for scale, variant in pending:
        arch = f"defect-yolo-{scale}" + VARIANT_SUFFIX[variant]
        start = time.perf_counter()
        version_id = train_detector(
            TrainRequest(
                data="neu-det",
                architecture=arch,
                epochs=args.epochs,
                imgsz=args.imgsz,
                batch=args.batch,
                device=args.device,
                seed=args.seed,
                patience=args.epochs,
                workers=args.workers,
            ),
            url=url,
        )
        record_trained(
            run_key(arch, args),
            {
                "architecture": arch,
                "seed": args.seed,
                "version_id": version_id,
                "epochs": args.epochs,
                "imgsz": args.imgsz,
                "batch": args.batch,
                "train_wall_s": round(time.perf_counter() - start, 1),
                # Wall time of a run trained beside others is not its time alone.
                "trained_beside": args.beside,
                "hardware": hardware(),
            },
        )


def evaluate_phase(url: str) -> None:
    from training.evaluate import evaluate_detector

    state = json.loads((WORK / "trained.json").read_text())
    # Runs trained elsewhere (another machine's work folder) stay in the result file: a GPU
    # session adds its rows beside the CPU ones instead of replacing them.
    result_file = RESULTS / "detector_neu.json"
    earlier = json.loads(result_file.read_text())["runs"] if result_file.exists() else []
    rows = [row for row in earlier if row["run"] not in state]
    for key, run in state.items():
        with session_scope(url) as session:
            version = get_model_version(session, run["version_id"])
            weights, thresholds = Path(version.file_path), version.thresholds
        result = evaluate_detector(weights, "neu-det", "test", thresholds=thresholds, url=url)
        rows.append({"run": key, **run, **result.to_json()})
        print(key, f"mAP50 {result.map50:.3f}", f"miss rate {result.miss_rate}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps({"split": "test", "runs": rows}, indent=2))
    lines = [
        "# Detector on NEU-DET (test split, 180 images)",
        "",
        "| model | seed | epochs | image size | train wall time | mAP50 | mAP50-95 | part miss rate "
        "| hardware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['architecture']} | {r.get('seed', 0)} | {r['epochs']} | {r['imgsz']} | {r['train_wall_s'] / 60:.0f} min"
            + (f" (beside {r['trained_beside']} other runs)" if r.get("trained_beside") else "")
            + " "
            f"| {r['map50']:.3f} | {r['map50_95']:.3f} | {r['miss_rate']:.4f} | {r['hardware']} |"
        )
    (RESULTS / "detector_neu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--phase", choices=["train", "evaluate", "all"], default="all")
    parser.add_argument("--scales", nargs="+", default=["n", "s"])
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANT_SUFFIX), default=["attention", "plain"]
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="train the scales and variants side by side, each in a process of its own (for a "
        "GPU that one small model leaves idle); each wall time is recorded with how many "
        "models trained beside it",
    )
    parser.add_argument("--beside", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.neu.is_dir():
        sys.exit(f"NEU-DET not found at {args.neu} (pass --neu)")
    url = get_settings().resolved_database_url
    upgrade(url)
    ensure_neu(url, args.neu)
    if args.phase in {"train", "all"}:
        train_phase(args, url)
    if args.phase in {"evaluate", "all"}:
        evaluate_phase(url)


if __name__ == "__main__":
    main()

"""Inference benchmark: our engine (each backend) against ultralytics' predict, side by side.

Same weights, the NEU-DET test images repeated to a few thousand parts (each copy made unique by
a trailing byte, as real camera frames are, so no cache or de-duplication flatters anyone):
- ultralytics `YOLO(weights).predict` image by image, and given the whole list (batched);
- our engine end to end, decoding through the database write, for PyTorch, ONNX Runtime and
  ONNX Runtime INT8 (static quantization calibrated on training images);
- the bare forward rate of each backend and the model's GFLOPs, so the distance to the limit shows;
- detection agreement: mAP50 / mAP50-95 of each on the 180 test images, scored by one ruler.

    python bench/inference.py --weights models/neu-det-demo/weights.pt --parts 2000

Writes bench/results/inference_<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="defects-inference-bench-"))
# Gone however the run ends: finished, failed, Ctrl-C, or stopped with SIGTERM.
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
os.environ["DEFECTS_DATA_DIR"] = str(WORK / "data")  # before the product reads its settings

from common import ensure_neu  # noqa: E402

import inspection  # noqa: E402,F401
from db.migrate import upgrade  # noqa: E402
from db.models import ModelKind  # noqa: E402
from db.queries import percentile  # noqa: E402
from db.session import session_scope  # noqa: E402
from inspection.batch import BatchInspection, iter_source  # noqa: E402
from inspection.engine import Inspector, PartInput  # noqa: E402
from inspection.images import decode_image, letterbox  # noqa: E402
from inspection.settings import get_settings  # noqa: E402
from training.evaluate import detection_map  # noqa: E402
from training.export import quantize_int8  # noqa: E402
from training.versions import register_model_version  # noqa: E402

OPERATING_CONF = 0.25
MAP_CONF = 0.001


def _summary(latencies_ms: list[float], seconds: float, parts: int) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "parts": parts,
        "seconds": round(seconds, 3),
        "parts_per_s": round(parts / seconds, 2),
        "p50_ms": round(percentile(ordered, 50), 2) if ordered else None,
        "p99_ms": round(percentile(ordered, 99), 2) if ordered else None,
    }


def make_parts(test_images: list[Path], count: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        source = test_images[i % len(test_images)]
        target = folder / f"{i:05d}_{source.name}"
        target.write_bytes(source.read_bytes() + i.to_bytes(4, "little"))
        paths.append(target)
    return paths


def ultralytics_single(weights: Path, paths: list[Path], imgsz: int, device: str) -> dict:
    from ultralytics import YOLO

    model = YOLO(str(weights))
    for path in paths[:10]:
        model.predict(str(path), imgsz=imgsz, conf=OPERATING_CONF, device=device, verbose=False)
    latencies = []
    start = time.perf_counter()
    for path in paths:
        began = time.perf_counter()
        model.predict(str(path), imgsz=imgsz, conf=OPERATING_CONF, device=device, verbose=False)
        latencies.append((time.perf_counter() - began) * 1000)
    return _summary(latencies, time.perf_counter() - start, len(paths))


ULTRALYTICS_LIST_MAX = 8000


def ultralytics_list(weights: Path, paths: list[Path], imgsz: int, device: str, batch: int) -> dict:
    from ultralytics import YOLO

    model = YOLO(str(weights))
    list(
        model.predict(
            [str(p) for p in paths[:batch]],
            imgsz=imgsz,
            conf=OPERATING_CONF,
            device=device,
            verbose=False,
            stream=True,
            batch=batch,
        )
    )
    # ultralytics stacks a list source into one tensor whatever `batch` says: past about 8000
    # parts at 256 px that runs a GPU out of memory, so longer runs measure its rate on the first.
    listed = paths[:ULTRALYTICS_LIST_MAX]
    start = time.perf_counter()
    count = sum(
        1
        for _ in model.predict(
            [str(p) for p in listed],
            imgsz=imgsz,
            conf=OPERATING_CONF,
            device=device,
            verbose=False,
            stream=True,
            batch=batch,
        )
    )
    seconds = time.perf_counter() - start
    return {**_summary([], seconds, count), "mean_ms": round(seconds / count * 1000, 2)}


def ultralytics_map(
    weights: Path, images: list[Path], truths: list, imgsz: int, device: str
) -> tuple[float, float]:
    from ultralytics import YOLO

    model = YOLO(str(weights))
    predictions = []
    for result in model.predict(
        [str(p) for p in images],
        imgsz=imgsz,
        conf=MAP_CONF,
        iou=0.7,
        device=device,
        verbose=False,
        stream=True,
        batch=16,
    ):
        boxes = result.boxes
        predictions.append(
            (boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy())
        )
    return detection_map(predictions, truths)


def engine_map(inspector: Inspector, images: list[Path], truths: list) -> tuple[float, float]:
    predictions = []
    for result in inspector.inspect(PartInput(p.name, p.read_bytes()) for p in images):
        names = inspector.class_names
        boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in result.detections]).reshape(-1, 4)
        predictions.append(
            (
                boxes,
                np.array([d.confidence for d in result.detections]),
                np.array([names.index(d.class_name) for d in result.detections]),
            )
        )
    return detection_map(predictions, truths)


def engine_end_to_end(model_name: str, inspector: Inspector, folder: Path, url: str) -> dict:
    job = BatchInspection(
        url, WORK / f"store-{model_name}", "bench", "bench", model=model_name, inspector=inspector
    )
    warm = WORK / f"warm-{model_name}"
    make_parts([next(folder.iterdir())], 16, warm)
    job.run(iter_source(str(warm)))
    del job.summary.latencies_ms[:]
    start = time.perf_counter()
    summary = job.run(iter_source(str(folder)))
    seconds = time.perf_counter() - start
    return _summary(summary.latencies_ms, seconds, summary.inspected - 16)


def engine_parallel(
    model_name: str,
    backend: str,
    source: Path,
    device: str,
    workers: int,
    folder: Path,
    url: str,
    batch: int | None = None,
) -> dict:
    """`defects batch --workers N` as a user runs it: worker processes that each load the
    model version and judge their share, at the product's default batch. Their first batches
    (model load, warm-up) are left out of the rate: it is taken from the arrival of result
    64 x workers (or a quarter of the parts, if fewer) to the last."""
    from sqlalchemy import select

    from db.models import ModelVersion
    from inspection.parallel import ParallelInspection

    with session_scope(url) as session:
        registered = Path(
            session.scalars(
                select(ModelVersion.file_path).where(ModelVersion.name == model_name)
            ).one()
        )
    if backend != "pytorch":  # the ONNX file the workers' backend looks for beside the weights
        suffix = ".int8.onnx" if backend == "onnx-int8" else ".onnx"
        shutil.copy(source, registered.with_suffix(suffix))
    job = ParallelInspection(
        url,
        WORK / f"store-{model_name}",
        "bench",
        "bench",
        workers,
        model_name,
        backend=backend,  # type: ignore[arg-type]
        device=device,
        batch_size=batch,
    )
    arrivals: list[float] = []
    dealer_cpu = time.process_time()  # this process: reading, hashing, dealing, results back
    job.run(iter_source(str(folder)), lambda _: arrivals.append(time.perf_counter()))
    dealer_cpu = time.process_time() - dealer_cpu
    warm = min(64 * workers, len(arrivals) // 4)
    steady_seconds = arrivals[-1] - arrivals[warm]
    run = _summary(job.summary.latencies_ms, steady_seconds, len(arrivals) - 1 - warm)
    run["parts_per_s_with_warm_up"] = round(job.summary.parts_per_second, 2)
    # The dealer is one process for every worker: its CPU per part bounds what they can reach.
    run["dealer_cpu_ms_per_part"] = round(dealer_cpu / len(arrivals) * 1000, 3)
    run["workers"] = workers
    run["workers_ready_after_s"] = [min(job.ready_after_s), max(job.ready_after_s)]
    run["workers_start_phases_s"] = {  # the slowest worker's of each phase
        "interpreter_and_imports": round(max(p[0] for p in job.start_phases_s), 2),
        "model_load": round(max(p[1] - p[0] for p in job.start_phases_s), 2),
    }
    parts, seconds = job.after_all_ready
    run["parts_per_s_once_all_ready"] = round(parts / seconds, 2) if seconds else None
    run["who_waited"] = job.who_waited()  # the dealer or the workers: which is the limit
    run["workers_exit_s"] = round(job.moments["exited"] - job.moments["last_done"], 2)
    run["batch"] = batch or "default"
    return run


def start_background_load(processes: int) -> None:
    """Busy processes for the rest of the run: the station's cores shared with other work (a
    retraining started from the Models page, another program), one core's worth each."""
    import atexit
    import subprocess

    code = "import numpy as np\na = np.random.rand(384, 384)\nwhile True:\n    a @ a"
    single = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    busy = [
        subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **single})
        for _ in range(processes)
    ]
    atexit.register(lambda: [process.kill() for process in busy])


TEMPLATE_DB = WORK / "template.db"


def keep_template(url: str) -> None:
    """The bench's database before any engine run (migrated, NEU-DET imported), copied for each
    run by `register_bench_version`."""
    import sqlite3

    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    target = sqlite3.connect(TEMPLATE_DB)
    source.backup(target)  # consistent, the write-ahead log included
    source.close()
    target.close()


def register_bench_version(weights: Path, name: str, class_names: list[str], imgsz: int) -> str:
    """A database of the run's own, with the run's model version: every run writes its parts as
    new rows, as a line's first run does. (In one shared database, the runs after the first
    found the parts' rows there already and wrote fewer.) Returns its URL."""
    run_db = WORK / f"run-{name}.db"
    shutil.copy(TEMPLATE_DB, run_db)
    url = f"sqlite:///{run_db}"
    with session_scope(url) as session:
        register_model_version(
            session,
            weights,
            WORK / "models",
            kind=ModelKind.DETECTOR,
            architecture="bench",
            class_names=class_names,
            image_size=imgsz,
            name=name,
            thresholds={"default": OPERATING_CONF, "iou": 0.45},
        )
    return url


GpuVariant = tuple[int | None, int | None]  # (CUDA graphs, batches in flight); None: default


def set_gpu_variant(variant: GpuVariant) -> None:
    """The engine's GPU settings for the Inspectors opened next."""
    for name, value in zip(("DEFECTS_CUDA_GRAPHS", "DEFECTS_GPU_STREAMS"), variant, strict=True):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    get_settings.cache_clear()


def gpu_suffix(variant: GpuVariant, graph_choices: list[int], stream_choices: list[int]) -> str:
    """Last in a run's name, where the mAP of its settings is matched; empty off the GPU."""
    graphs, in_flight = variant
    return (f"-t{in_flight}" if in_flight is not None and len(stream_choices) > 1 else "") + (
        f"-g{graphs}" if graphs is not None and len(graph_choices) > 1 else ""
    )


def engine_one_at_a_time(
    model_name: str,
    inspector: Inspector,
    folder: Path,
    url: str,
    parts: int,
    wal_checkpoints: bool = True,
) -> dict:
    """Each part handed over alone, once the previous one's verdict is in the database, as a
    line camera triggered by each part feeds a station slower than the station's limit: the
    latency is a part's own (read, decode, infer, verdict, database), with no queue in front.
    Without `wal_checkpoints`, SQLite checkpoints inside the commits, as it did before the
    background checkpoints."""
    from inspection.batch import read_file

    job = BatchInspection(
        url, WORK / f"store-{model_name}", "bench", "bench", model=model_name, inspector=inspector
    )
    if not wal_checkpoints:
        job.checkpointer.interval_s = float("inf")
    files = sorted(folder.iterdir())
    for path in files[:8]:  # warm-up parts, not counted
        job.run([read_file(path, path.name)])
    latencies = []
    start = time.perf_counter()
    for path in files[8 : 8 + parts]:
        began = time.perf_counter()
        job.run([read_file(path, path.name)])
        latencies.append((time.perf_counter() - began) * 1000)
    return _summary(latencies, time.perf_counter() - start, len(latencies))


def replay_network(inspector: Inspector, images: list[Path]) -> None:
    """The network's answer for one batch of real images, replayed for every later batch: what
    is left is the time of everything around the network."""
    sample = np.stack(
        [
            letterbox(decode_image(path.read_bytes()), inspector.backend.image_size).pixels
            for path in images[: inspector.batch_size]
        ]
    )
    recorded = inspector.backend.infer(sample)

    def replay(batch: np.ndarray) -> np.ndarray:
        return np.resize(recorded, (len(batch), *recorded.shape[1:]))

    inspector.backend.infer = replay  # type: ignore[method-assign]
    inspector.backend.infer_side_by_side = replay  # type: ignore[method-assign]


def ceiling_without_network(
    weights: Path,
    backend: str,
    device: str,
    batch: int,
    processes: int,
    folder: Path,
    images: list[Path],
) -> dict:
    """The engine end to end with the network's answer replayed instead of computed: how fast
    the rest (read, hash, decode, letterbox, NMS, verdict, image store, database) can go, so
    that a shortfall against a target is placed on the network or on the code around it."""
    inspector = Inspector.from_weights(
        weights,
        {"default": OPERATING_CONF, "iou": 0.45},
        backend,
        device,
        batch,
        prepare_processes=processes,
    )
    replay_network(inspector, images)
    run_url = register_bench_version(
        weights, f"ceiling-p{processes}", inspector.class_names, inspector.backend.image_size
    )
    run = engine_end_to_end(f"ceiling-p{processes}", inspector, folder, run_url)
    inspector.close()
    run["batch"] = inspector.batch_size
    run["prepare_processes"] = processes
    run["note"] = "network replayed, not computed: the ceiling of everything around it"
    return run


def replay_onnx(source: Path, images: list[Path], imgsz: int, target: Path) -> Path:
    """An ONNX model that answers a batch of up to 64 with the real model's outputs for 64 real
    images, recorded once: the network replayed, as a model file that worker processes load like
    any other (the in-process replay cannot reach them)."""
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    input_name = model.graph.input[0].name
    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    tensors = [letterbox(decode_image(p.read_bytes()), imgsz).tensor for p in images[:64]]
    recorded = session.run(None, {input_name: np.stack((tensors * 64)[:64])})[0]
    constants = [
        numpy_helper.from_array(recorded, "recorded"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Shape", [input_name], ["batch"], start=0, end=1),
            helper.make_node("Slice", ["recorded", "zero", "batch", "zero"], ["answer"]),
            helper.make_node("Identity", ["answer"], [model.graph.output[0].name]),
        ],
        "replay",
        [model.graph.input[0]],
        [model.graph.output[0]],
        initializer=constants,
    )
    replay = helper.make_model(graph, opset_imports=model.opset_import)
    replay.ir_version = model.ir_version
    replay.metadata_props.extend(model.metadata_props)
    onnx.save(replay, str(target))
    return target


def bare_forward(inspector: Inspector, imgsz: int, batch: int, seconds: float = 10.0) -> dict:
    """The network alone, called from as many threads as the backend takes batches at once."""
    tensor = np.random.default_rng(0).random((batch, 3, imgsz, imgsz), dtype=np.float32)
    streams = inspector.backend.streams
    infer = inspector.backend.infer_side_by_side if streams > 1 else inspector.backend.infer
    for _ in range(3):
        infer(tensor)
    counts = [0] * streams
    start = time.perf_counter()

    def loop(stream: int) -> None:
        while time.perf_counter() - start < seconds:
            infer(tensor)
            counts[stream] += batch

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "batch": batch,
        "streams": streams,
        "images_per_s": round(sum(counts) / (time.perf_counter() - start), 1),
    }


def markdown_table(result: dict) -> str:
    lines = [
        f"# Inference on {result['hardware']}: {result['parts']} NEU-DET parts at {result['imgsz']} px",
        "",
        f"Model {result['weights']}, {result['gflops']} GFLOPs; operating confidence {result['operating_conf']}. "
        "End to end = read, decode, infer, NMS, verdict and the database write."
        + (
            f" Every run beside {result['background_load_processes']} busy processes."
            if result.get("background_load_processes")
            else ""
        ),
        "",
        "| run | batch | parts/s | parts/s with start-up | p50 ms | p99 ms | x ultralytics single | x ultralytics list | bare forward img/s | mAP50 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for name, run in result["runs"].items():
        bare = run.get("bare_forward", {}).get("images_per_s", "")
        if run.get("workers"):
            notes.append(
                f"{name}: parts/s from the {run['workers']} workers' first results to the last "
                f"({run['parts']} parts); with start-up: the whole command, workers' start "
                "(a fresh interpreter and the model each) included."
            )
        elif run.get("parts") and run["parts"] != result["parts"]:
            notes.append(f"{name}: measured on the first {run['parts']} parts.")
        lines.append(
            f"| {name} | {run.get('batch', '')} | {run['parts_per_s']} | "
            f"{run.get('parts_per_s_with_warm_up', '')} | {run.get('p50_ms') or ''} | "
            f"{run.get('p99_ms') or ''} | {run.get('speedup_vs_ultralytics_single', '')} | "
            f"{run.get('speedup_vs_ultralytics_list', '')} | {bare} | {run.get('map50', '')} |"
        )
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def add_demo_arguments(parser: argparse.ArgumentParser, parts: int) -> None:
    """--weights (the demo model), --neu and --parts, for the benches that time the product's
    runs on copies of the NEU-DET test images."""
    parser.add_argument(
        "--weights", type=Path, default=ROOT / "models" / "neu-det-demo" / "weights.pt"
    )
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--parts", type=int, default=parts)


def prepare_demo_parts(args: argparse.Namespace) -> tuple[list[Path], Path, dict]:
    """The NEU-DET test images, `args.parts` unique copies of them in the bench's folder, the
    migrated template database (`register_bench_version` copies it) and the weights' model card."""
    names = (args.neu / "splits" / "test.txt").read_text().split()
    images = [args.neu / "images" / name for name in names]
    folder = WORK / "parts"
    make_parts(images, args.parts, folder)
    setup = f"sqlite:///{WORK / 'bench.db'}"
    upgrade(setup)
    keep_template(setup)
    return images, folder, json.loads((args.weights.parent / "model.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", type=Path, default=ROOT / "models" / "neu-det-demo" / "weights.pt"
    )
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--parts", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch", type=int, default=16, help="ultralytics' batch and the bare-forward batch"
    )
    parser.add_argument(
        "--engine-batches",
        type=int,
        nargs="+",
        default=[2, 4, 16],
        help="our engine's batch sizes (a backend's cap, 4 on a CPU, drops the larger ones there)",
    )
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnx", "onnx-int8"])
    parser.add_argument("--skip-ultralytics-single", action="store_true")
    parser.add_argument(
        "--prepare-processes",
        type=int,
        nargs="+",
        default=[0],
        help="decoding worker processes (0: threads); the engine's largest batch and the "
        "ceiling run once for each value, the other batches with the first",
    )
    parser.add_argument(
        "--one-at-a-time",
        type=int,
        default=0,
        metavar="PARTS",
        help="also hand this many parts to each backend's engine one by one, each after the "
        "previous verdict: a part's own latency at batch 1, with no queue in front of it",
    )
    parser.add_argument(
        "--one-at-a-time-ceiling",
        action="store_true",
        help="also run the parts one at a time with the network replayed: the latency of the "
        "code around it",
    )
    parser.add_argument(
        "--onnx-no-spinning",
        action="store_true",
        help="also run the ONNX engine at its smallest batch with ONNX Runtime's thread "
        "spinning off (DEFECTS_ONNX_SPINNING=0)",
    )
    parser.add_argument(
        "--background-load",
        type=int,
        default=0,
        help="busy processes on the machine during every run, as a retraining beside the "
        "inspection would be; compare only with a run under the same load",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the engine with the network replayed: the ceiling of the code around it",
    )
    parser.add_argument(
        "--cpu-streams",
        type=int,
        nargs="+",
        default=[0],
        help="batches ONNX Runtime infers at once on the CPU (DEFECTS_CPU_STREAMS; 0: one per "
        "core); each ONNX batch size runs once for each value",
    )
    parser.add_argument(
        "--gpu-streams",
        type=int,
        nargs="+",
        default=[1],
        help="batches the PyTorch backend has in flight at once on a GPU "
        "(DEFECTS_GPU_STREAMS); each of its runs once for each value",
    )
    parser.add_argument(
        "--wal-checkpoints",
        type=int,
        nargs="+",
        choices=[0, 1],
        default=[1],
        help="the one-at-a-time runs with SQLite's log checkpointed in the background (1, the "
        "engine's way) or inside the commits (0); each runs once for each value",
    )
    parser.add_argument(
        "--bare-seconds",
        type=float,
        default=10.0,
        help="how long each run's bare forward rate is measured",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="also run each backend as `defects batch --workers N` for each N above 1: worker "
        "processes each with the model and its share of the cores, at the default batch",
    )
    parser.add_argument(
        "--cuda-graphs",
        type=int,
        nargs="+",
        choices=[0, 1],
        default=[1],
        help="the PyTorch backend on a GPU records its forward passes as CUDA graphs "
        "(DEFECTS_CUDA_GRAPHS); each of its runs once for each value",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/results/inference_<cpu|gpu>.json"
    )
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for our engine",
    )
    args = parser.parse_args()
    args.engine_batches = sorted(set(args.engine_batches))  # b16 given twice is one run
    import onnxruntime
    import torch
    from sqlalchemy import select
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    from db.models import Dataset
    from training.evaluate import split_truths
    from training.export import export_detector

    url = f"sqlite:///{WORK / 'bench.db'}"
    upgrade(url)
    ensure_neu(url, args.neu)
    keep_template(url)
    with session_scope(url) as session:
        dataset_root = Path(
            session.scalars(select(Dataset.root_path).where(Dataset.name == "neu-det")).one()
        )
    yolo = YOLO(str(args.weights))
    imgsz = int(yolo.ckpt["train_args"]["imgsz"])
    class_names = [yolo.names[i] for i in sorted(yolo.names)]
    test_images, truths = split_truths(dataset_root, "test")
    train_images = sorted((dataset_root / "images" / "train").iterdir())[::12]
    weights = WORK / "weights.pt"
    shutil.copy(args.weights, weights)
    onnx_path = export_detector(weights, imgsz=imgsz, dynamic=True)
    parts_dir = WORK / "parts"
    parts = make_parts(test_images, args.parts, parts_dir)
    gpu = args.device.startswith("cuda")
    result: dict = {
        "hardware": torch.cuda.get_device_name(0)
        if gpu
        else f"CPU, {os.cpu_count()} cores ({platform.machine()})",
        "weights": args.weights.name,
        "imgsz": imgsz,
        "gflops": round(get_flops(yolo.model, imgsz), 3),
        "parts": args.parts,
        "operating_conf": OPERATING_CONF,
        "backends": args.backends,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "background_load_processes": args.background_load,
        "runs": {},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    start_background_load(args.background_load)
    ul_device = "0" if gpu else "cpu"
    result["runs"]["ultralytics_list"] = ultralytics_list(
        weights, parts, imgsz, ul_device, args.batch
    )
    print("ultralytics list", result["runs"]["ultralytics_list"])
    if not args.skip_ultralytics_single:
        result["runs"]["ultralytics_single"] = ultralytics_single(weights, parts, imgsz, ul_device)
        print("ultralytics single", result["runs"]["ultralytics_single"])
    map50, map50_95 = ultralytics_map(weights, test_images, truths, imgsz, ul_device)
    result["runs"]["ultralytics_list"].update(map50=round(map50, 4), map50_95=round(map50_95, 4))

    sources = {"pytorch": weights, "onnx": onnx_path}
    if "onnx-int8" in args.backends:
        sources["onnx-int8"] = quantize_int8(
            onnx_path, train_images, imgsz
        )  # calibrated on train images
    ultralytics_threads = torch.get_num_threads()  # what its select_device chose for the CPU
    result["ultralytics_torch_threads"] = ultralytics_threads
    torch.set_num_threads(args.engine_threads)
    result["engine_torch_threads"] = args.engine_threads
    for backend in args.backends:
        engine_kind = "pytorch" if backend == "pytorch" else "onnx"
        first = args.prepare_processes[0]
        streams = args.cpu_streams if engine_kind == "onnx" else [1]
        on_gpu = engine_kind == "pytorch" and gpu
        gpu_variants: list[GpuVariant] = (
            [(g, t) for g in args.cuda_graphs for t in args.gpu_streams]
            if on_gpu
            else [(None, None)]
        )

        variants = [
            (batch, first, True, n, v)
            for v in gpu_variants
            for batch in args.engine_batches
            for n in streams
        ]
        variants += [
            (max(args.engine_batches), n, True, streams[0], v)
            for v in gpu_variants
            for n in args.prepare_processes[1:]
        ]
        if args.onnx_no_spinning and engine_kind == "onnx":
            variants.append((min(args.engine_batches), first, False, streams[0], (None, None)))

        measured: set[tuple[int, int, bool, int, GpuVariant]] = set()
        for batch, processes, spinning, cpu_streams, variant in variants:
            os.environ["DEFECTS_ONNX_SPINNING"] = str(int(spinning))
            set_gpu_variant(variant)
            operating = Inspector.from_weights(
                sources[backend],
                {"default": OPERATING_CONF, "iou": 0.45},
                engine_kind,
                args.device,
                batch,
                prepare_processes=processes,
                cpu_streams=cpu_streams,
            )
            # A backend caps the batch (4 on a CPU): a larger request would repeat a run.
            key = (operating.batch_size, processes, spinning, operating.backend.streams, variant)
            if key in measured:
                print(f"{backend}: batch {batch} runs as {operating.batch_size}, measured already")
                operating.close()
                continue
            measured.add(key)
            batch = operating.batch_size
            name = (
                f"{backend}-b{batch}"
                + (f"-s{operating.backend.streams}" if len(streams) > 1 else "")
                + (f"-p{processes}" if processes else "")
                + ("" if spinning else "-nospin")
                + gpu_suffix(variant, args.cuda_graphs, args.gpu_streams)
            )
            run_url = register_bench_version(weights, name, class_names, imgsz)
            run = engine_end_to_end(name, operating, parts_dir, run_url)
            run["batch"] = operating.batch_size
            run["prepare_processes"] = processes
            run["onnx_spinning"] = spinning if engine_kind == "onnx" else None
            run["streams"] = operating.backend.streams
            run["bare_forward"] = bare_forward(operating, imgsz, args.batch, args.bare_seconds)
            run["backend"] = operating.backend.describe()
            operating.close()
            result["runs"][f"engine_{name}"] = run
            print(name, run)
        os.environ.pop("DEFECTS_ONNX_SPINNING", None)
        set_gpu_variant(gpu_variants[0])
        for workers in [n for n in args.workers if n > 1]:
            name = f"{backend}-bdefault-w{workers}" + gpu_suffix(
                gpu_variants[0], args.cuda_graphs, args.gpu_streams
            )
            run_url = register_bench_version(weights, name, class_names, imgsz)
            run = engine_parallel(
                name, backend, sources[backend], args.device, workers, parts_dir, run_url
            )
            result["runs"][f"engine_{name}"] = run
            print(name, run)
        # A part on its own takes the lone-batch path: batches in flight change nothing there.
        lone_variants = [v for v in gpu_variants if v[1] in (None, args.gpu_streams[0])]
        one_at_a_time = [
            (n, v, w) for v in lone_variants for n in streams for w in args.wal_checkpoints
        ]
        replays = [False, True] if args.one_at_a_time_ceiling else [False]
        one_at_a_time = [(n, v, w, r) for n, v, w in one_at_a_time for r in replays]
        for cpu_streams, variant, wal, replayed in one_at_a_time if args.one_at_a_time else []:
            set_gpu_variant(variant)
            single = Inspector.from_weights(
                sources[backend],
                {"default": OPERATING_CONF, "iou": 0.45},
                engine_kind,
                args.device,
                1,
                cpu_streams=cpu_streams,
            )
            name = (
                f"{backend}-one-at-a-time"
                + (f"-s{single.backend.streams}" if len(streams) > 1 else "")
                + (f"-w{wal}" if len(args.wal_checkpoints) > 1 else "")
                + ("-ceiling" if replayed else "")
                + gpu_suffix(variant, args.cuda_graphs, args.gpu_streams)
            )
            if replayed:
                replay_network(single, test_images)
            run_url = register_bench_version(weights, name, class_names, imgsz)
            run = engine_one_at_a_time(
                name, single, parts_dir, run_url, args.one_at_a_time, bool(wal)
            )
            single.close()
            run["batch"] = 1
            run["streams"] = single.backend.streams
            run["backend"] = single.backend.describe()
            if replayed:
                run["note"] = "network replayed, not computed: the lone part's path around it"
            result["runs"][f"engine_{name}"] = run
            print(name, run)
        for variant in gpu_variants:  # scored with each: the settings must change nothing
            set_gpu_variant(variant)
            scoring = Inspector.from_weights(
                sources[backend],
                {"default": MAP_CONF, "iou": 0.7},
                engine_kind,
                args.device,
                args.batch,
            )
            map50, map50_95 = engine_map(scoring, test_images, truths)
            scoring.close()
            suffix = gpu_suffix(variant, args.cuda_graphs, args.gpu_streams)
            for name, run in result["runs"].items():
                if (
                    name.startswith((f"engine_{backend}-b", f"engine_{backend}-one-at-a-time"))
                    and name.endswith(suffix)
                    and "note" not in run  # a replayed network's answers have no mAP
                ):
                    run.update(map50=round(map50, 4), map50_95=round(map50_95, 4))
        set_gpu_variant((None, None))
    for processes in args.prepare_processes if args.ceiling else []:
        name = "ceiling_without_network" + (f"-p{processes}" if processes else "")
        result["runs"][name] = ceiling_without_network(
            sources[args.backends[0]],
            "pytorch" if args.backends[0] == "pytorch" else "onnx",
            args.device,
            max(args.engine_batches),
            processes,
            parts_dir,
            test_images,
        )
        print(name, result["runs"][name])
    if args.ceiling and len(args.workers) > 1:
        # The code around the network in one process and spread over worker processes, the
        # network replayed by an ONNX model on the CPU (the CPU backend's largest batch, 4).
        replay = replay_onnx(onnx_path, test_images, imgsz, WORK / "replay.onnx")
        for workers in args.workers:
            name = f"ceiling_onnx_replay-b4-w{workers}"
            run_url = register_bench_version(weights, name, class_names, imgsz)
            if workers > 1:
                run = engine_parallel(name, "onnx", replay, "cpu", workers, parts_dir, run_url, 4)
            else:
                alone = Inspector.from_weights(
                    replay, {"default": OPERATING_CONF, "iou": 0.45}, "onnx", "cpu", 4
                )
                run = engine_end_to_end(name, alone, parts_dir, run_url)
                run["batch"] = alone.batch_size
                alone.close()
            run["note"] = "network replayed by an ONNX model: the ceiling of the code around it"
            result["runs"][name] = run
            print(name, run)
    reference = result["runs"]["ultralytics_list"]
    for name, run in result["runs"].items():
        if name.startswith("engine_") and "note" not in run:
            run["speedup_vs_ultralytics_list"] = round(
                run["parts_per_s"] / reference["parts_per_s"], 2
            )
            if "ultralytics_single" in result["runs"]:
                run["speedup_vs_ultralytics_single"] = round(
                    run["parts_per_s"] / result["runs"]["ultralytics_single"]["parts_per_s"], 2
                )
            run["map50_difference"] = round(run["map50"] - reference["map50"], 4)
    out = args.out or ROOT / "bench" / "results" / f"inference_{'gpu' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown_table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

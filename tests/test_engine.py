"""The inspection engine on the CPU: backends agree, bad inputs give per-part errors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inspection.backends.base import Backend, OutOfMemory
from inspection.backends.onnx_backend import choose_providers
from inspection.engine import Inspector, PartInput, postprocess
from inspection.images import ImageDecodeError, decode_image
from inspection.settings import usable_cores
from inspection.verdict import Thresholds
from tests.conftest import Trained
from tests.synthetic import CLASSES, make_images


def _png(image: Image.Image, **params) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    image.save(buffer, format=params.pop("format", "PNG"), **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def onnx_weights(trained: Trained) -> Path:
    from training.export import export_detector

    return export_detector(trained.weights, dynamic=True)


@pytest.mark.parametrize("spinning", ["1", "0"])
def test_onnx_thread_spinning_follows_the_setting(
    onnx_weights: Path, spinning: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspection.backends.onnx_backend import OnnxBackend
    from inspection.settings import get_settings

    monkeypatch.setenv("DEFECTS_ONNX_SPINNING", spinning)
    get_settings.cache_clear()
    try:
        backend = OnnxBackend(onnx_weights)
    finally:
        get_settings.cache_clear()
    options = backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning


def test_onnx_and_pytorch_backends_give_the_same_detections(
    trained: Trained, onnx_weights: Path, tmp_path: Path
) -> None:
    # A one-epoch model is barely confident: compare at a threshold its outputs reach.
    thresholds = {"default": 0.001, "iou": 0.5}
    parts = [
        PartInput(p.name, p.read_bytes())
        for p in sorted((tmp_path / "imgs").glob("*.png"))
        or [tmp_path / "imgs" / im.name for im in make_images(tmp_path / "imgs", n=8, seed=5)]
    ]
    torch_results = list(
        Inspector.from_weights(trained.weights, thresholds, "pytorch").inspect(parts)
    )
    onnx_results = list(Inspector.from_weights(onnx_weights, thresholds, "onnx").inspect(parts))
    compared = 0
    for a, b in zip(torch_results, onnx_results, strict=True):
        assert a.verdict == b.verdict and (a.width, a.height) == (b.width, b.height)
        for det in a.detections:
            if det.confidence < 0.0012:  # too close to the threshold to demand both keep it
                continue
            twins = [
                o
                for o in b.detections
                if o.class_name == det.class_name
                and abs(o.confidence - det.confidence) < 1e-4
                and max(
                    abs(o.x1 - det.x1), abs(o.y1 - det.y1), abs(o.x2 - det.x2), abs(o.y2 - det.y2)
                )
                < 0.5
            ]
            assert twins, det
            compared += 1
    assert compared > 0


def test_the_engine_matches_ultralytics_predict(trained: Trained, tmp_path: Path) -> None:
    from ultralytics import YOLO

    images = make_images(tmp_path / "imgs", n=4, seed=9)
    paths = [tmp_path / "imgs" / im.name for im in images]
    ours = list(
        Inspector.from_weights(trained.weights, {"default": 0.001, "iou": 0.7}, "pytorch").inspect(
            PartInput(p.name, p.read_bytes()) for p in paths
        )
    )
    theirs = YOLO(str(trained.weights)).predict(
        [str(p) for p in paths], imgsz=64, conf=0.001, iou=0.7, verbose=False
    )
    for mine, reference in zip(ours, theirs, strict=True):
        confidences = sorted(round(d.confidence, 4) for d in mine.detections)
        assert confidences == sorted(round(float(c), 4) for c in reference.boxes.conf)
        assert confidences


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty file"),
        (b"serial,defect\n1,none\n", "not an image file"),
        (None, "corrupt or truncated image"),
        ("huge", "image too large"),
        ("bomb", "image too large: 400 MP is over the 64 MP limit"),  # refused by Pillow at open
        ("black", "blank image (every pixel at gray level 0): check the camera"),
        ("flat", "blank image (every pixel at gray levels 119 to 121)"),
        ("blue", "blank image (every pixel at the colour (20, 60, 200))"),
    ],
)
def test_bad_inputs_give_a_clear_per_part_error(trained: Trained, payload, reason: str) -> None:  # type: ignore[no-untyped-def]
    if payload is None:
        payload = _png(Image.new("L", (64, 64), 128))[:60]
    elif payload == "huge":
        payload = _png(Image.new("1", (9000, 9000)))
    elif payload == "bomb":
        payload = _png(Image.new("1", (20000, 20000)))
    elif payload == "black":  # a lens cap, dead lighting
        payload = _png(Image.new("L", (640, 480)))
    elif payload == "flat":  # a camera sending a fill colour, a trace of noise on it
        flat = np.full((300, 400, 3), 120, dtype=np.uint8)
        flat[::7, ::5] = 121
        flat[3::11, 2::13] = 119
        payload = _png(Image.fromarray(flat))
    elif payload == "blue":  # a camera's fill colour: flat in each channel, not across them
        payload = _png(Image.new("RGB", (320, 240), (20, 60, 200)))
    inspector = Inspector.from_weights(trained.weights, None, "pytorch")
    good = _png(_textured(64, 64))
    results = list(inspector.inspect([PartInput("bad", payload), PartInput("good", good)]))
    assert results[0].verdict == "error" and reason in (results[0].error or "")
    assert results[1].verdict in {"pass", "fail"}  # the batch goes on


def _textured(width: int, height: int) -> Image.Image:
    """A plain surface as a camera sees it: a little sensor noise, no defect."""
    noise = np.random.default_rng(0).normal(120, 4, (height, width, 3))
    return Image.fromarray(noise.clip(0, 255).astype(np.uint8))


def test_a_faint_mark_on_a_plain_surface_is_not_blank() -> None:
    """The sample decides most frames; one it calls blank is checked whole, so a mark the
    sample stepped over still makes the frame a part to judge."""
    from inspection.images import blank_frame_reason

    surface = np.full((2000, 3000), 90, dtype=np.uint8)
    surface[1001:1004, 1501:1504] = 97  # a 3-pixel mark between the sample's rows and columns
    assert blank_frame_reason(decode_image(_png(Image.fromarray(surface)))) is None
    surface[1001:1004, 1501:1504] = 90
    assert "blank image" in (blank_frame_reason(decode_image(_png(Image.fromarray(surface)))) or "")


def test_image_kinds_decode_to_rgb() -> None:
    gray16 = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 3).astype(np.uint16))
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 0))
    palette = Image.new("P", (40, 30))
    for image in (gray16, rgba, palette, Image.new("L", (40, 30))):
        decoded = decode_image(_png(image))
        assert decoded.pixels.shape == (30, 40, 3) and decoded.pixels.dtype == np.uint8
    # A 12-bit camera image stored in 16 bits keeps its contrast.
    twelve_bit = Image.fromarray(np.full((8, 8), 4095, dtype=np.uint16))
    assert decode_image(_png(twelve_bit)).pixels.max() == 255


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    decoded = decode_image(_png(image, format="JPEG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (20, 40)


def test_decode_errors_are_value_errors() -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(b"GIF89a broken")


def test_a_postscript_file_named_as_an_image_is_refused_without_running_ghostscript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "part.png" holding PostScript was handed to Ghostscript to draw, where a station has
    it: a program from whoever uploaded the file."""
    from PIL import EpsImagePlugin

    ran = tmp_path / "ghostscript-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {ran}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # (found again, on this PATH)
    postscript = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    with pytest.raises(ImageDecodeError, match=r"^not an image file \(PostScript"):
        decode_image(postscript)
    assert not ran.exists()


def test_postprocess_suppresses_within_an_image_and_class_only() -> None:
    """NMS and rescaling by hand-made outputs of a 32 px letterbox. Overlapping boxes of one
    image and class keep the best; those of another class or image stay, even a box past the
    image's corner whose group, shifted by the largest coordinate alone (torchvision's
    batched_nms), would land on the box of the group before it."""
    names = ["scratch", "pit"]

    def anchor(cx: float, cy: float, w: float, h: float, scratch: float, pit: float) -> list[float]:
        return [cx, cy, w, h, scratch, pit]

    image_0 = [  # 32 x 32: gain 1, no padding
        anchor(10, 16, 8, 8, 0.9, 0.0),  # kept
        anchor(10.5, 16, 8, 8, 0.8, 0.0),  # suppressed by the first
        anchor(10.5, 16, 8, 8, 0.0, 0.7),  # another class: kept
        anchor(28, 28, 8, 8, 0.6, 0.0),  # in the bottom right corner: (24, 24, 32, 32)
        anchor(-4, -4, 10, 10, 0.0, 0.5),  # past the top left corner, class pit: kept
        anchor(20, 16, 8, 8, 0.1, 0.0),  # under the threshold
    ]
    image_1 = [anchor(10, 16, 8, 8, 0.4, 0.0), *[anchor(0, 0, 1, 1, 0, 0)] * 5]  # 64 x 32
    raw = np.array([image_0, image_1], dtype=np.float32).transpose(0, 2, 1)  # (2, 6, anchors)
    thresholds = Thresholds.from_dict({"default": 0.3, "iou": 0.45}, names)
    found, left_out = postprocess(raw, [(32, 32), (32, 64)], 32, names, thresholds)
    assert left_out == [0, 0]
    assert [(d.class_name, round(d.confidence, 2)) for d in found[0]] == [
        ("scratch", 0.9),
        ("pit", 0.7),
        ("scratch", 0.6),
        ("pit", 0.5),
    ]
    first, past_corner = found[0][0], found[0][3]
    assert (first.x1, first.y1, first.x2, first.y2) == (6.0, 12.0, 14.0, 20.0)
    assert (past_corner.x1, past_corner.y1, past_corner.x2, past_corner.y2) == (0, 0, 1, 1)
    [other] = found[1]  # gain 0.5 and 8 px of padding above and below: x * 2, (y - 8) * 2
    assert (other.class_name, other.counted) == ("scratch", True)
    assert (other.x1, other.y1, other.x2, other.y2) == (12.0, 8.0, 28.0, 24.0)


def _lattice(scores: list[tuple[int, float]], n_classes: int = 2) -> np.ndarray:
    """One image's raw output, 640 px: each (class, confidence) an anchor of its own, 4 px
    boxes 20 px apart (none overlaps another, so NMS keeps every one), in the order given."""
    raw = np.zeros((4 + n_classes, len(scores)), dtype=np.float32)
    for k, (cls, confidence) in enumerate(scores):
        raw[:4, k] = (10 + 20 * (k % 32), 10 + 20 * (k // 32), 4, 4)
        raw[4 + cls, k] = confidence
    return raw


# 310 scratches under scratch's threshold, more confident than three pits over pit's.
_CROWDED = [(0, 0.8 - k / 10000) for k in range(310)] + [(1, 0.4)] * 3
_PER_CLASS = {"default": 0.3, "per_class": {"scratch": 0.9, "pit": 0.3}, "iou": 0.45}


def test_an_images_uncounted_boxes_never_push_out_a_counted_class() -> None:
    """Each image kept its 300 most confident boxes: with a class's threshold above the
    others', its boxes under that threshold filled them, and the pits that fail the part went."""
    names = ["scratch", "pit"]
    raw = np.stack([_lattice(_CROWDED), _lattice([(1, 0.5)] + [(0, 0)] * 312)])
    found, left_out = postprocess(
        raw, [(640, 640)] * 2, 640, names, Thresholds.from_dict(_PER_CLASS, names)
    )
    counted = [(d.class_name, round(d.confidence, 2)) for d in found[0] if d.counted]
    assert counted == [("pit", 0.4)] * 3
    faint = [d for d in found[0] if not d.counted]
    assert len(faint) == 300 and {d.class_name for d in faint} == {"scratch"}
    assert faint[-1].confidence == pytest.approx(0.8 - 299 / 10000)  # (the most confident)
    assert [(d.class_name, d.counted) for d in found[1]] == [("pit", True)]
    assert left_out == [0, 0]


def test_an_images_bound_keeps_each_counted_class_and_says_how_many_went(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one threshold, an image's least confident class lost every box past the cap, and
    nothing said so. Now an image keeps what a tiled part's bound keeps (`bound_counted`, the
    same rule), and how many counted boxes it left out is returned beside its detections."""
    from inspection import engine

    names = ["scratch", "pit"]
    thresholds = Thresholds.from_dict({"default": 0.3}, names)
    scores = [(0, 0.9 - k / 100) for k in range(6)] + [(1, 0.5 - k / 100) for k in range(3)]
    raw = np.stack([_lattice(scores), _lattice([(0, 0.4), (1, 0.35)] + [(0, 0)] * 7)])
    everything, none_out = postprocess(raw, [(640, 640)] * 2, 640, names, thresholds)
    assert none_out == [0, 0] and len(everything[0]) == 9
    monkeypatch.setattr(engine, "MAX_DETECTIONS", 3)
    monkeypatch.setattr(engine, "MAX_COUNTED", 4)
    monkeypatch.setattr(engine, "MIN_COUNTED_PER_CLASS", 2)
    found, left_out = postprocess(raw, [(640, 640)] * 2, 640, names, thresholds)
    assert found[0] == everything[0][:4] + everything[0][6:8]  # 4 scratches, 2 pits beside
    assert (found[0], left_out[0]) == engine.bound_counted(everything[0])
    assert found[1] == everything[1] and left_out == [3, 0]


class _Crowded(Backend):
    """A network that finds `_CROWDED` in every image."""

    name = "crowded"
    device = "test"
    image_size = 640
    class_names = ["scratch", "pit"]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.stack([_lattice(_CROWDED)] * len(batch))


def test_a_part_a_high_threshold_class_crowds_still_fails_and_records_what_went(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calibrated per class, a part whose scratches (none over scratch's threshold) outnumbered
    the cap passed, its pits dropped: an escape. Now it fails for its pits; a part judged
    whole records how many counted boxes it left out, 0 where it kept them all."""
    from inspection import engine

    inspector = Inspector(_Crowded(), Thresholds.from_dict(_PER_CLASS, _Crowded.class_names))
    try:
        judged = inspector.inspect_one("part.png", _png(_textured(64, 64)))
        monkeypatch.setattr(engine, "MAX_COUNTED", 1)
        monkeypatch.setattr(engine, "MIN_COUNTED_PER_CLASS", 1)
        bounded = inspector.inspect_one("part.png", _png(_textured(64, 64)))
    finally:
        inspector.close()
    assert (judged.verdict, judged.failed_classes, judged.boxes_left_out) == ("fail", ["pit"], 0)
    assert bounded.verdict == "fail" and bounded.boxes_left_out == 2


class _SmallMemoryBackend(Backend):
    """A backend whose device holds at most two images: the engine must split bigger batches."""

    name = "small-memory"
    device = "test"
    image_size = 32
    class_names = CLASSES
    max_batch = 8

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > 2:
            raise OutOfMemory("out of memory")
        self.batch_sizes.append(len(batch))
        return np.zeros((len(batch), 4 + len(CLASSES), 21), dtype=np.float32)


def test_out_of_memory_splits_the_batch_and_retries() -> None:
    backend = _SmallMemoryBackend()
    inspector = Inspector(backend, batch_size=8)
    image = _png(_textured(32, 32))
    results = list(inspector.inspect(PartInput(f"p{i}", image) for i in range(8)))
    assert [r.verdict for r in results] == ["pass"] * 8
    assert sum(backend.batch_sizes) == 8 and max(backend.batch_sizes) <= 2
    assert inspector.batch_size <= 2


def test_pytorch_on_a_cpu_runs_eagerly_and_cuda_graphs_are_on_by_default(trained: Trained) -> None:
    from inspection.backends.torch_backend import TorchBackend
    from inspection.settings import Settings

    assert Settings().cuda_graphs is True and Settings().gpu_streams == 1
    backend = TorchBackend(trained.weights, "cpu", cuda_graphs=True, gpu_streams=2)
    assert backend.cuda_graphs is False  # recording needs a GPU: the CPU path is the eager one
    assert backend.streams == 1  # torch's CPU threads are the process's: one batch at a time
    batch = np.zeros((2, 3, backend.image_size, backend.image_size), dtype=np.uint8)
    assert backend.infer(batch).shape[:2] == (2, 4 + len(CLASSES))
    assert backend._graphs == {}


class _RecordedForward:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        assert len(batch) <= self.shape[0]  # padded into the recorded batch
        return np.full((len(batch), 4 + len(CLASSES), 3), 7.0, dtype=np.float32)


def test_cuda_graphs_are_recorded_per_batch_bucket_and_bounded(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recording itself needs a GPU (checked on one by bench/inference.py); which shapes are
    recorded, replayed, refused or left eager is plain logic, checked here with the recording
    replaced by a stand-in."""
    import torch

    from inspection.backends import torch_backend
    from inspection.backends.torch_backend import MAX_GRAPHS, TorchBackend, recorded_batch

    assert [recorded_batch(n) for n in (1, 2, 3, 4, 5, 37, 64)] == [1, 2, 4, 4, 8, 64, 64]
    backend = TorchBackend(trained.weights, "cpu")
    backend.cuda_graphs = True
    recorded: list[int] = []

    def capture(shape: tuple[int, ...], dtype: np.dtype) -> _RecordedForward:
        recorded.append(shape[0])
        if shape[0] == 4:
            raise RuntimeError("operation not permitted when stream is capturing")
        if shape[0] == 8:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return _RecordedForward(shape)

    monkeypatch.setattr(backend, "_capture", capture)
    monkeypatch.setattr(torch_backend.torch.cuda, "empty_cache", lambda: None)
    size = backend.image_size

    def infer(n: int, dtype: type = np.uint8) -> np.ndarray:
        return backend.infer(np.zeros((n, 3, size, size), dtype=dtype))

    assert (infer(1) == 7.0).all() and (infer(1) == 7.0).all()  # replayed
    assert recorded == [1]  # recorded once
    assert infer(37).shape[0] == 37 and (infer(50) == 7.0).all()  # both in the batch-64 graph
    assert recorded == [1, 64]
    eager = infer(3)  # recording batch 4 failed: eager, and not tried again
    assert eager.shape[0] == 3 and not (eager == 7.0).all()
    infer(4)
    assert recorded.count(4) == 1
    infer(5)  # out of memory while recording batch 8: eager now, tried again later
    infer(6)
    assert recorded.count(8) == 2
    for n in (2, 16, 32, 128):
        infer(n)
    infer(1, np.float32)  # another input type is another shape
    replayed = [key for key, graph in backend._graphs.items() if graph is not None]
    assert len(replayed) == MAX_GRAPHS - 1  # 1, 2, 16, 32, 64, 128 of uint8, 1 of float32
    infer(2, np.float32)
    assert len([g for g in backend._graphs.values() if g is not None]) == MAX_GRAPHS
    assert (infer(16, np.float32) != 7.0).any()  # past the bound: eager, unrecorded
    assert ((16, 3, size, size), "<f4") not in backend._graphs


def test_warm_up_records_the_shapes_a_run_then_uses(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warmed up, a run's batches and a lone part replay what the warm-up recorded: the first
    parts do not wait for a recording (the stand-in of the last test, as a GPU's is needed)."""
    from inspection.backends.torch_backend import TorchBackend

    backend = TorchBackend(trained.weights, "cpu")
    backend.cuda_graphs = True
    recorded: list[int] = []

    def capture(shape: tuple[int, ...], dtype: np.dtype) -> _RecordedForward:
        recorded.append(shape[0])
        return _RecordedForward(shape)

    monkeypatch.setattr(backend, "_capture", capture)
    inspector = Inspector(backend, batch_size=4)
    inspector.warm_up()
    assert recorded == [4, 1]
    image = _png(_textured(48, 40))
    results = list(inspector.inspect(PartInput(f"p{i}", image) for i in range(7)))
    results.append(inspector.inspect_one("alone", image))
    assert len(results) == 8 and all(r.verdict != "error" for r in results)
    assert recorded == [4, 1]  # nothing recorded while parts waited


def test_gpu_providers_are_explicit_and_fall_back_to_cpu() -> None:
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = choose_providers("cuda:1", everything)
    assert [p[0] if isinstance(p, tuple) else p for p in chosen] == everything
    assert chosen[1] == ("CUDAExecutionProvider", {"device_id": 1})
    assert choose_providers("cuda:0", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("cpu", everything) == ["CPUExecutionProvider"]


def test_int8_export_for_cpu_stations(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from inspection.settings import get_settings
    from training.cli import app
    from training.export import read_metadata

    monkeypatch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["export", trained.version_name, "--int8", "--data", "synth"])
    assert result.exit_code == 0, result.output
    int8 = trained.weights.with_suffix(".int8.onnx")
    assert read_metadata(int8)["defects.precision"] == "int8"
    assert json.loads(read_metadata(int8)["defects.classes"]) == CLASSES
    images = make_images(tmp_path / "imgs", n=3, seed=8)
    inspector = Inspector.from_weights(trained.weights, {"default": 0.001}, "onnx-int8")
    results = list(
        inspector.inspect(
            PartInput(i.name, (tmp_path / "imgs" / i.name).read_bytes()) for i in images
        )
    )
    assert [r.verdict for r in results] != [] and all(r.error is None for r in results)
    missing = CliRunner().invoke(app, ["export", trained.version_name, "--int8"])
    assert missing.exit_code != 0


def test_preparing_in_worker_processes_gives_the_same_results_and_survives_a_dead_worker(
    trained: Trained, tmp_path: Path
) -> None:
    """Beside a GPU, parts are decoded in processes; a worker that dies (as on a decoder crash)
    costs no part: its chunk is prepared again in a fresh pool."""
    import os
    import signal

    images = make_images(tmp_path / "imgs", n=6, seed=11)
    parts = [PartInput(i.name, (tmp_path / "imgs" / i.name).read_bytes()) for i in images]
    parts.insert(2, PartInput("broken.png", b"\x89PNG\r\n\x1a\nnot really"))
    thresholds = {"default": 0.001, "iou": 0.5}
    threads = Inspector.from_weights(trained.weights, thresholds, "pytorch", batch_size=4)
    expected = [(r.verdict, r.error, len(r.detections)) for r in threads.inspect(parts)]
    assert threads.prepare_processes == 0  # on a CPU the network needs the cores

    processes = Inspector(threads.backend, threads.thresholds, 4, prepare_processes=2)
    try:
        got = [(r.verdict, r.error, len(r.detections)) for r in processes.inspect(parts)]
        assert got == expected and got[2][0] == "error"
        crashed = processes._processes
        assert crashed is not None
        for pid in list(crashed._processes):  # a real crash: SIGKILL the workers
            os.kill(pid, signal.SIGKILL)
        again = [(r.verdict, r.error, len(r.detections)) for r in processes.inspect(parts)]
        assert again == expected
        assert processes._processes is not crashed  # a fresh pool took over
        stored = list(processes.inspect(parts, store_into=tmp_path / "store"))
        # Workers keep every part's bytes, the undecodable one too (kept with its error).
        for part, result in zip(parts, stored, strict=True):
            assert result.stored_path is not None and result.stored_path.read_bytes() == part.data
    finally:
        processes.close()


def test_batch_one_keeps_every_worker_busy_and_results_in_order(
    trained: Trained, tmp_path: Path
) -> None:
    """At batch 1 (a GPU station inspecting part by part) several parts are decoded ahead."""
    images = make_images(tmp_path / "imgs", n=9, seed=13)
    parts = [PartInput(i.name, (tmp_path / "imgs" / i.name).read_bytes()) for i in images]
    thresholds = {"default": 0.001, "iou": 0.5}
    loaded = Inspector.from_weights(trained.weights, thresholds, "pytorch")
    batched = Inspector(loaded.backend, loaded.thresholds, 4, prepare_workers=2)
    one_by_one = Inspector(loaded.backend, loaded.thresholds, 1, prepare_workers=4)
    assert batched._prefetch_depth() == 1 and one_by_one._prefetch_depth() == 4
    expected = [(r.name, r.verdict, len(r.detections)) for r in batched.inspect(parts)]
    got = [(r.name, r.verdict, len(r.detections)) for r in one_by_one.inspect(parts)]
    assert got == expected == [(p.name, *e[1:]) for p, e in zip(parts, expected, strict=True)]


def test_onnx_batches_inferred_side_by_side_give_the_same_results_in_order(
    onnx_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspection.backends.onnx_backend import OnnxBackend
    from inspection.settings import get_settings

    images = make_images(tmp_path / "imgs", n=11, seed=17)
    parts = [PartInput(i.name, (tmp_path / "imgs" / i.name).read_bytes()) for i in images]
    parts.insert(5, PartInput("broken.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100))
    thresholds = {"default": 0.001, "iou": 0.5}

    def outcome(streams: int) -> list[tuple]:  # type: ignore[type-arg]
        inspector = Inspector.from_weights(
            onnx_weights, thresholds, "onnx", batch_size=2, cpu_streams=streams
        )
        assert inspector.backend.streams == min(streams, len(usable_cores()))
        try:
            return [
                (
                    r.name,
                    r.verdict,
                    r.error,
                    [(d.class_name, round(d.confidence, 5), round(d.x1, 2)) for d in r.detections],
                )
                for r in inspector.inspect(parts)
            ]
        finally:
            inspector.close()

    one_at_a_time = outcome(1)
    assert [name for name, *_ in one_at_a_time] == [p.name for p in parts]
    assert one_at_a_time[5][1] == "error"
    assert outcome(4) == one_at_a_time  # streams are capped at the cores
    # The setting: 0 (the default) is one stream per core, each on one thread.
    monkeypatch.setenv("DEFECTS_CPU_STREAMS", "0")
    get_settings.cache_clear()
    try:
        backend = OnnxBackend(onnx_weights)
    finally:
        get_settings.cache_clear()
    cores = len(usable_cores())
    assert backend.streams == cores
    assert backend.session.get_session_options().intra_op_num_threads == cores
    if cores > 1:
        assert backend._side_by_side is not None
        assert backend._side_by_side.get_session_options().intra_op_num_threads == 1


def test_a_part_on_its_own_is_inferred_on_every_core(
    onnx_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches run side by side only when several are queued: a lone part takes the latency
    path (the session on every core), a backlog the throughput path."""
    images = make_images(tmp_path / "imgs", n=6, seed=19)
    parts = [PartInput(i.name, (tmp_path / "imgs" / i.name).read_bytes()) for i in images]
    inspector = Inspector.from_weights(onnx_weights, {"default": 0.001}, "onnx", cpu_streams=2)
    if inspector.backend.streams < 2:
        pytest.skip("one core: nothing runs side by side")
    calls: list[str] = []
    backend = inspector.backend
    wide, narrow = backend.infer, backend.infer_side_by_side
    monkeypatch.setattr(backend, "infer", lambda b: calls.append("wide") or wide(b))
    monkeypatch.setattr(
        backend, "infer_side_by_side", lambda b: calls.append("narrow") or narrow(b)
    )
    try:
        alone = inspector.inspect_one(parts[0].name, parts[0].data)
        assert calls == ["wide"]
        calls.clear()
        backlog = list(inspector.inspect(parts))
        assert calls == ["narrow"] * len(parts)  # batches of one, side by side
    finally:
        inspector.close()
    assert (alone.verdict, len(alone.detections)) == (
        backlog[0].verdict,
        len(backlog[0].detections),
    )


def test_an_export_beside_its_weights_loads_their_checkpoint_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .onnx beside the weights is checked against their grid and their training size:
    each check loaded the whole checkpoint again, at every station's start."""
    import shutil

    import torch

    from inspection.engine import open_backend

    demo = Path(__file__).resolve().parents[1] / "models" / "neu-det-demo"
    for name in ("weights.pt", "weights.onnx"):  # (copies: a file no cache has read yet)
        shutil.copy(demo / name, tmp_path / name)
    loaded: list[object] = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    backend = open_backend(tmp_path / "weights.pt", "onnx", "cpu")
    assert backend.model_path == tmp_path / "weights.onnx"
    assert loaded == [str(tmp_path / "weights.pt")]

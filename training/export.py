"""ONNX export of a detector, with the product's metadata (classes, thresholds, version)."""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

import inspection  # noqa: F401 - runtime preparation first
from inspection.detector import architecture_of, load_detector
from inspection.engine import EXPORTED_FROM_KEY, sha256_of
from inspection.errors import UserError
from inspection.images import failed_write, replace_synced, write_fix
from inspection.tiling import ONNX_METADATA_KEY, tile_of_checkpoint

METADATA_PREFIX = "defects."


def _not_exported(exc: OSError, folder: Path, what: str, kept: str) -> UserError | OSError:
    """A failed write (a full disk, a folder not writable, a disk failing its writes) said in
    one line with the folder, what stays as it was and what to do: ultralytics, torch and onnx
    wrote there with no word of where, and the export stopped with the system's bare
    "[Errno 28] No space left on device" or "[Errno 5] Input/output error". Any other error
    is returned as it is."""
    if not failed_write(exc, folder):
        return exc
    return UserError(
        f"cannot write {what} in {folder}: {exc.strerror or exc}; {kept}: {write_fix(exc)} and "
        "export again"
    )


def onnx_target(weights: Path, imgsz: int, trained_imgsz: int, half: bool) -> Path:
    """Where an export goes. `<stem>.onnx` beside the weights is the file stations run (the
    engine takes it on a CPU): only an export that gives the checkpoint's detections, float32
    at the training size, may be that file. An fp16 or other-size export is named for what it
    is, so that exporting for another machine does not change what the stations here judge at
    their calibrated thresholds."""
    tags = ([str(imgsz)] if imgsz != trained_imgsz else []) + (["fp16"] if half else [])
    return weights.with_name(".".join([weights.stem, *tags, "onnx"]))


def _replace_atomically(written: Path, target: Path) -> None:
    """A station may be opening `target` as it is replaced: it sees the old file or the new.
    Synced, so that a power cut leaves one of them too: an export left empty under its name
    stopped the station started on it."""
    replace_synced(written, target)


@contextmanager
def _ultralytics_quiet() -> Iterator[None]:
    """ultralytics logs its export at INFO whatever `verbose` says, ending with "Results saved
    to" and `yolo predict` commands that name the scratch folder, deleted by the time they are
    read: only its warnings and errors are let through; the caller says where the file went."""
    import logging

    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def export_detector(
    weights: Path,
    imgsz: int | None = None,
    half: bool = False,
    dynamic: bool = False,
    thresholds: dict[str, Any] | None = None,
    version_name: str | None = None,
    device: str = "cpu",
) -> Path:
    """Write the ONNX file beside the weights (see `onnx_target`) and return its path; a full
    disk leaves the file there as it was (written in a folder of its own, then renamed)."""
    try:
        return _export_detector(weights, imgsz, half, dynamic, thresholds, version_name, device)
    except OSError as exc:
        raise _not_exported(
            exc,
            weights.parent,
            "the ONNX export",
            "nothing is exported, the .onnx files there are as they were",
        ) from exc


def _export_detector(
    weights: Path,
    imgsz: int | None,
    half: bool,
    dynamic: bool,
    thresholds: dict[str, Any] | None,
    version_name: str | None,
    device: str,
) -> Path:
    # ultralytics writes `<weights>.onnx` beside the file it exports, which may be the stations'
    # file: it exports a copy in a folder of its own, and the result takes the target's place.
    # The copy is the one checkpoint loaded (it was loaded twice, once for its classes).
    with tempfile.TemporaryDirectory(dir=weights.parent, prefix=".export-") as scratch:
        copy = Path(shutil.copy2(weights, Path(scratch) / weights.name))
        model = load_detector(copy)
        ckpt = model.ckpt if isinstance(model.ckpt, dict) else {}
        trained_imgsz = int(ckpt.get("train_args", {}).get("imgsz", 640))
        tile = tile_of_checkpoint(ckpt)  # (a tiled model's export judges parts by its grid)
        imgsz = imgsz or trained_imgsz
        target = onnx_target(weights, imgsz, trained_imgsz, half)
        names = [model.names[i] for i in sorted(model.names)]
        architecture = architecture_of(model)  # (read before the export fuses the model)
        with _ultralytics_quiet():
            exported = Path(
                model.export(
                    format="onnx",
                    imgsz=imgsz,
                    quantize=16 if half else None,  # (its `half` is deprecated: a warning)
                    dynamic=dynamic,
                    simplify=True,
                    device=device.removeprefix("cuda:") if device.startswith("cuda") else "cpu",
                    verbose=False,
                )
            )
        proto = onnx.load(str(exported))
        extra = {
            "classes": json.dumps(names),
            "thresholds": json.dumps(thresholds or {}),
            "architecture": architecture,
            "imgsz": str(imgsz),
            "model_version": version_name or "",
        }
        extra = {METADATA_PREFIX + key: value for key, value in extra.items()}
        # (stations refuse an export of other weights than theirs: `check_export_source`)
        extra[EXPORTED_FROM_KEY] = sha256_of(copy)
        if tile is not None:
            extra[ONNX_METADATA_KEY] = json.dumps(tile.to_json())
        existing = {p.key: p for p in proto.metadata_props}
        for full, value in extra.items():
            if full in existing:
                existing[full].value = value
            else:
                proto.metadata_props.append(onnx.StringStringEntryProto(key=full, value=value))
        onnx.save(proto, str(exported))
        _replace_atomically(exported, target)
    return target


def store_weights_as_float16(onnx_path: Path, min_elements: int = 64) -> Path:
    """Rewrite a float32 ONNX model in place so that its weights take half the bytes on disk.

    Each float32 weight of at least `min_elements` values is stored as float16 and cast back to
    float32 by a Cast node. ONNX Runtime folds those casts into float32 constants when it builds
    the session, so the model still computes in float32 at the same speed on a CPU station. The
    weights lose float16 rounding (about 5e-4 of each value) after ultralytics has fused its
    batch norms into the convolutions, so confidences and boxes move slightly from the
    checkpoint's (measure a file with `defects evaluate FILE.onnx`); the demo ships float32,
    which gives the checkpoint's detections exactly. Written here
    because onnxconverter-common's float16 conversion moves the computation to float16 as well,
    which the CPU provider runs slowly or not at all. Running it twice changes nothing.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    stored, casts = [], []
    for weight in graph.initializer:
        size = int(np.prod(weight.dims)) if weight.dims else 1
        if weight.data_type != TensorProto.FLOAT or size < min_elements:
            stored.append(weight)
            continue
        half_name = f"{weight.name}.float16"
        values = numpy_helper.to_array(weight).astype(np.float16)
        stored.append(numpy_helper.from_array(values, half_name))
        casts.append(
            helper.make_node(
                "Cast", [half_name], [weight.name], to=TensorProto.FLOAT, name=f"{half_name}.cast"
            )
        )
    if not casts:
        return onnx_path
    del graph.initializer[:]
    graph.initializer.extend(stored)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*casts, *nodes])  # a cast must come before the nodes that read it
    model.metadata_props.append(
        onnx.StringStringEntryProto(key=METADATA_PREFIX + "weights_stored_as", value="float16")
    )
    onnx.checker.check_model(model)
    written = onnx_path.with_name(f".{onnx_path.name}.writing")
    try:
        onnx.save(model, str(written))
        _replace_atomically(written, onnx_path)  # the stations' file, perhaps being opened
    except OSError as exc:
        written.unlink(missing_ok=True)  # (a full disk's half file held its space)
        raise _not_exported(
            exc,
            onnx_path.parent,
            "the compact model",
            f"{onnx_path.name} is as it was, its weights float32",
        ) from exc
    return onnx_path


def read_metadata(onnx_path: Path) -> dict[str, str]:
    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_classifier(weights: Path, version_name: str | None = None) -> Path:
    """ONNX of the classifier (dynamic batch), its classes and image size in the metadata.
    No thresholds: a classifier judges at those the detector's calibration stores for it, and
    its own placeholders (0.5), written here, read as the ones stations use."""
    from inspection.classifier import load_classifier

    model, image_size = load_classifier(weights)
    target = weights.with_suffix(".onnx")
    try:
        _export_classifier(model, image_size, target, version_name)
    except OSError as exc:
        raise _not_exported(
            exc,
            target.parent,
            "the ONNX export",
            f"nothing is exported, {target.name} is as it was",
        ) from exc
    return target


def _export_classifier(model: Any, image_size: int, target: Path, version_name: str | None) -> None:
    import torch

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as scratch:
        written = Path(scratch) / target.name
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, image_size, image_size),),
            str(written),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        proto = onnx.load(str(written))
        for key, value in {
            "classes": json.dumps(model.class_names),
            "imgsz": str(image_size),
            "architecture": f"defect-cls-{model.backbone_name}",
            "model_version": version_name or "",
        }.items():
            proto.metadata_props.append(
                onnx.StringStringEntryProto(key=METADATA_PREFIX + key, value=value)
            )
        onnx.save(proto, str(written))
        _replace_atomically(written, target)


@contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """Python's temporary files made in `folder` for the while: onnxruntime's quantization
    writes its shape-inferred and calibration models in the system's temporary folder, so a
    full one there was said as the model's folder filling, and its space was not the one the
    export needs. (Process-wide: exports run in the command's own process.)"""
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before


def _head_prefix(graph) -> str:  # type: ignore[no-untyped-def]
    """Node-name prefix of the last model layer (the Detect head), e.g. '/model.27/'."""
    layers = [
        int(n.name.split("/")[1].split(".")[1]) for n in graph.node if n.name.startswith("/model.")
    ]
    return f"/model.{max(layers)}/"


def quantize_int8(onnx_path: Path, calibration_images: list[Path], imgsz: int) -> Path:
    """Static INT8 ONNX for CPU stations (QDQ, per-channel weights), calibrated on real images.

    Only the backbone and neck convolutions are quantized: the detection head (its box
    distribution and the final concat of pixel boxes with 0-1 scores) stays in floating point,
    where one 8-bit range cannot hold both. Written beside the source as `<stem>.int8.onnx`.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from inspection.images import ImageDecodeError, decode_image, letterbox

    if not calibration_images:
        raise UserError("INT8 calibration needs images")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration_images)

        def get_next(self) -> dict[str, Any] | None:
            for path in self.items:
                try:
                    return {
                        "images": letterbox(decode_image(path.read_bytes()), imgsz).tensor[None]
                    }
                except (OSError, ImageDecodeError):
                    continue  # an unreadable calibration image is skipped, not fatal
            return None

    target = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    # Written in a folder of its own beside the source and renamed once whole: quantize_static
    # wrote `target` in place (and onnxruntime its intermediates beside the source), so a disk
    # that filled left a half INT8 file where stations look for one, and the intermediates.
    try:
        with (
            tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=".int8-") as scratch,
            _temporary_files_in(Path(scratch)),
        ):
            prepared = Path(scratch) / "prepared.onnx"
            written = Path(scratch) / target.name
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            head = _head_prefix(graph)
            quantize_static(
                str(prepared),
                str(written),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv"],
                nodes_to_exclude=[n.name for n in graph.node if n.name.startswith(head)],
            )
            source_meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
            model = onnx.load(str(written))
            for key, value in {**source_meta, METADATA_PREFIX + "precision": "int8"}.items():
                model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
            onnx.save(model, str(written))
            _replace_atomically(written, target)
    except (OSError, DecodeError) as exc:
        # (onnx's shape inference, in C++, writes a file a full disk cuts short without a
        # word: onnxruntime's next read of it is the first to fail, in protobuf's words.)
        full = (
            exc
            if isinstance(exc, OSError)
            else OSError(errno.ENOSPC, "a file written there came back cut short (a full disk?)")
        )
        raise _not_exported(
            full,
            onnx_path.parent,
            "the INT8 model",
            f"no INT8 model is exported, {target.name} is as it was ({onnx_path.name} was written)",
        ) from exc
    return target

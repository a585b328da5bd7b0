"""ONNX export of a detector, with the product's metadata (classes, thresholds, version)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

import inspection  # noqa: F401 - runtime preparation first
from inspection.detector import architecture_of, load_detector
from inspection.errors import UserError

METADATA_PREFIX = "defects."


def export_detector(
    weights: Path,
    imgsz: int | None = None,
    half: bool = False,
    dynamic: bool = False,
    thresholds: dict[str, Any] | None = None,
    version_name: str | None = None,
    device: str = "cpu",
) -> Path:
    """Write `<weights>.onnx` beside the weights and return its path."""
    model = load_detector(weights)
    if half and device == "cpu":
        raise UserError("--half needs a GPU to export on (pass --device cuda:0)")
    ckpt = model.ckpt if isinstance(model.ckpt, dict) else {}
    imgsz = imgsz or int(ckpt.get("train_args", {}).get("imgsz", 640))
    exported = Path(
        model.export(
            format="onnx",
            imgsz=imgsz,
            half=half,
            dynamic=dynamic,
            simplify=True,
            device=device.removeprefix("cuda:") if device.startswith("cuda") else "cpu",
            verbose=False,
        )
    )
    proto = onnx.load(str(exported))
    names = [model.names[i] for i in sorted(model.names)]
    extra = {
        "classes": json.dumps(names),
        "thresholds": json.dumps(thresholds or {}),
        "architecture": architecture_of(model),
        "imgsz": str(imgsz),
        "model_version": version_name or "",
    }
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in extra.items():
        full = METADATA_PREFIX + key
        if full in existing:
            existing[full].value = value
        else:
            proto.metadata_props.append(onnx.StringStringEntryProto(key=full, value=value))
    onnx.save(proto, str(exported))
    return exported


def read_metadata(onnx_path: Path) -> dict[str, str]:
    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_classifier(
    weights: Path, version_name: str | None = None, thresholds: dict[str, Any] | None = None
) -> Path:
    """ONNX of the classifier (dynamic batch), its classes and image size in the metadata."""
    import torch

    from inspection.classifier import load_classifier

    model, image_size = load_classifier(weights)
    target = weights.with_suffix(".onnx")
    example = torch.zeros(1, 3, image_size, image_size)
    torch.onnx.export(
        model,
        (example,),
        str(target),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(target))
    for key, value in {
        "classes": json.dumps(model.class_names),
        "imgsz": str(image_size),
        "architecture": f"defect-cls-{model.backbone_name}",
        "model_version": version_name or "",
        "thresholds": json.dumps(thresholds or {}),
    }.items():
        proto.metadata_props.append(
            onnx.StringStringEntryProto(key=METADATA_PREFIX + key, value=value)
        )
    onnx.save(proto, str(target))
    return target

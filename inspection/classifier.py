"""The defect classifier: a torchvision backbone whose multi-scale features are fused by
torchvision's FeaturePyramidNetwork and weighted by channel + spatial attention, with a head over
"good" plus the defect classes.

It serves twice: on the whole part (a defect the detector did not box can still fail it) and on
each detection's crop (to confirm or reject it, cutting false calls). Backbones are built with
weights=None: nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FeaturePyramidNetwork

from inspection.attention import ChannelSpatialAttention
from inspection.errors import UserError, checkpoint_reason

GOOD = "good"
# Stages at strides 8, 16 and 32 of each backbone.
BACKBONES: dict[str, tuple[Any, dict[str, str]]] = {
    "resnet18": (models.resnet18, {"layer2": "p3", "layer3": "p4", "layer4": "p5"}),
    "mobilenet_v3_small": (
        models.mobilenet_v3_small,
        {"features.3": "p3", "features.8": "p4", "features.12": "p5"},
    ),
    "efficientnet_b0": (
        models.efficientnet_b0,
        {"features.3": "p3", "features.5": "p4", "features.7": "p5"},
    ),
}
FPN_CHANNELS = 128


class DefectClassifier(nn.Module):
    def __init__(
        self, backbone: str, class_names: list[str], fpn_channels: int = FPN_CHANNELS
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise UserError(
                f"unknown classifier backbone {backbone!r}; choose one of {', '.join(BACKBONES)}"
            )
        if not class_names or class_names[0] != GOOD:
            raise ValueError(f"the first class must be {GOOD!r}")
        builder, return_nodes = BACKBONES[backbone]
        self.backbone_name = backbone
        self.class_names = list(class_names)
        self.fpn_channels = fpn_channels
        self.body = create_feature_extractor(builder(weights=None), return_nodes=return_nodes)
        with torch.no_grad():
            channels = [f.shape[1] for f in self.body(torch.zeros(1, 3, 64, 64)).values()]
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels)
        self.attention = nn.ModuleList(ChannelSpatialAttention() for _ in channels)
        self.head = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(fpn_channels * len(channels), len(class_names))
        )

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The attended FPN levels (used by distillation as well as by the head)."""
        pyramid = self.fpn(OrderedDict(self.body(images)))
        return [
            attend(level) for attend, level in zip(self.attention, pyramid.values(), strict=True)
        ]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = [level.mean(dim=(2, 3)) for level in self.features(images)]
        return self.head(torch.cat(pooled, dim=1))


@dataclass(frozen=True)
class ClassifierCheckpoint:
    backbone: str
    class_names: list[str]
    image_size: int
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]


def save_classifier(
    model: DefectClassifier, path: Path, image_size: int, metrics: dict[str, Any] | None = None
) -> None:
    """A plain dict of tensors and names: loadable with torch.load(weights_only=True).

    Written beside `path` and renamed once whole: saved into the file itself, a disk that
    filled stopped the training in torch's "unexpected pos 704 vs 598", no errno nor file
    named, and left the file there before cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(
        {
            "kind": "defect-classifier",
            "backbone": model.backbone_name,
            "class_names": model.class_names,
            "image_size": image_size,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "metrics": metrics or {},
        },
        buffer,
    )
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(buffer.getbuffer())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def load_classifier(path: Path, device: str = "cpu") -> tuple[DefectClassifier, int]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classifier file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # (torch's own message, "Weights only load failed ... re-running with weights_only
        # set to False will likely succeed", sent the reader the wrong way.)
        raise UserError(
            f"cannot load the classifier {path}: not a classifier checkpoint (a damaged file, "
            "or another kind of file)"
        ) from exc
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise UserError(f"cannot load the classifier {path}: {checkpoint_reason(exc)}") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != "defect-classifier":
        raise UserError(f"{path.name} is not a defect-classifier checkpoint")
    model = DefectClassifier(checkpoint["backbone"], checkpoint["class_names"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), int(checkpoint["image_size"])


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 (or H x W grayscale) uint8 to 3 x size x size float32 in [0, 1] (stretched:
    textures, not shapes). Grayscale is made three channels after resizing, the same values
    at a third of the work, so that training can keep grayscale images one channel."""
    import cv2

    resized = cv2.resize(
        pixels,
        (size, size),
        interpolation=cv2.INTER_AREA if pixels.shape[0] > size else cv2.INTER_LINEAR,
    )
    if resized.ndim == 2:
        resized = np.repeat(resized[:, :, None], 3, axis=2)
    return resized.transpose(2, 0, 1).astype(np.float32) / 255.0


def crop_with_context(
    pixels: np.ndarray, box: tuple[float, float, float, float], context: float = 0.25
) -> np.ndarray:
    """The box grown by `context` of its size on each side, clipped to the image."""
    height, width = pixels.shape[:2]
    x1, y1, x2, y2 = box
    grow_x, grow_y = (x2 - x1) * context, (y2 - y1) * context
    left, top = max(int(x1 - grow_x), 0), max(int(y1 - grow_y), 0)
    right, bottom = min(int(np.ceil(x2 + grow_x)), width), min(int(np.ceil(y2 + grow_y)), height)
    if right - left < 2 or bottom - top < 2:
        return pixels
    return pixels[top:bottom, left:right]

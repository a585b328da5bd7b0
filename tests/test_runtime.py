from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import inspection  # noqa: F401 - registers the fallback where needed
from inspection.nms_fallback import nms_reference
from inspection.runtime import configure_ultralytics


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=generator) * 200
    wh = torch.rand(n, 2, generator=generator) * 60 + 1
    scores = torch.rand(n, generator=generator)
    return torch.cat([xy, xy + wh], dim=1), scores


@pytest.mark.parametrize(
    ("n", "seed", "iou"), [(0, 0, 0.5), (1, 1, 0.5), (300, 2, 0.45), (3000, 3, 0.7)]
)
def test_nms_matches_ultralytics_torch_nms(n: int, seed: int, iou: float) -> None:
    from ultralytics.utils.nms import TorchNMS

    boxes, scores = _random_boxes(n, seed)
    expected = TorchNMS.nms(boxes, scores, iou)
    import torchvision

    for kept in (nms_reference(boxes, scores, iou), torchvision.ops.nms(boxes, scores, iou)):
        # Same boxes kept; ultralytics' unstable sort may order equal scores differently.
        assert sorted(kept.tolist()) == sorted(expected.tolist())
        assert torch.all(scores[kept][:-1] >= scores[kept][1:])


def test_nms_keeps_torchvision_order_for_equal_scores() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert nms_reference(boxes, scores, 0.5).tolist() == [0, 1]


def test_nms_on_clustered_detections() -> None:
    from ultralytics.utils.nms import TorchNMS

    generator = torch.Generator().manual_seed(11)
    centers = torch.rand(20, 2, generator=generator) * 200
    xy = centers[torch.randint(0, 20, (4000,), generator=generator)]
    xy = xy + torch.randn(4000, 2, generator=generator) * 3
    boxes = torch.cat([xy, xy + 20], dim=1)
    scores = torch.rand(4000, generator=generator)
    expected = TorchNMS.nms(boxes, scores, 0.6)
    assert sorted(nms_reference(boxes, scores, 0.6).tolist()) == sorted(expected.tolist())


def test_nms_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics.utils.nms import TorchNMS

    import inspection.nms_fallback as runtime

    monkeypatch.setattr(runtime, "_NMS_BLOCK", 64)
    monkeypatch.setattr(runtime, "_NMS_FIRST_BLOCK", 16)
    boxes, scores = _random_boxes(500, 7)
    kept = runtime.nms_reference(boxes, scores, 0.3)
    assert sorted(kept.tolist()) == sorted(TorchNMS.nms(boxes, scores, 0.3).tolist())


def test_ultralytics_is_offline_with_a_local_font(tmp_path: Path) -> None:
    configure_ultralytics(tmp_path / "cfg", tmp_path / "runs")
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    settings = json.loads((tmp_path / "cfg" / "Ultralytics" / "settings.json").read_text())
    assert settings["sync"] is False and settings["mlflow"] is False and settings["comet"] is False
    assert (tmp_path / "cfg" / "Ultralytics" / "Arial.ttf").stat().st_size > 10_000
    from ultralytics.utils import ONLINE
    from ultralytics.utils.checks import check_font

    assert ONLINE is False
    assert Path(check_font("Arial.ttf")).exists()


def test_torch_is_imported_only_when_a_model_is_needed() -> None:
    """`defects status` and a parallel run's dealing process never import torch; torchvision,
    imported later from wherever, still works (on a CPU torch: through the NMS fallback), also
    after a find_spec that imported nothing."""
    import subprocess
    import sys

    script = """
import importlib.util, sys
import training.cli, inspection.parallel
assert "torch" not in sys.modules, "torch imported at start"
assert importlib.util.find_spec("torchvision") is not None
import ultralytics  # imports torchvision
import torch, torchvision
boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])
kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert kept.tolist() == [0, 2], kept
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]

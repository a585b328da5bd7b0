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


def _greedy_loop(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> list[int]:
    """Greedy NMS one box at a time, as torchvision's kernel: by falling score (equal scores
    in index order), a box dropped when a kept box's IoU with it is above the threshold."""
    box_list, score_list = boxes.double().tolist(), scores.tolist()
    kept: list[int] = []
    for i in sorted(range(len(box_list)), key=lambda k: -score_list[k]):
        x1, y1, x2, y2 = box_list[i]
        area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
        suppressed = False
        for k in kept:
            a1, b1, a2, b2 = box_list[k]
            inter = max(min(x2, a2) - max(x1, a1), 0.0) * max(min(y2, b2) - max(y1, b1), 0.0)
            union = area + max(a2 - a1, 0.0) * max(b2 - b1, 0.0) - inter
            # (Two empty boxes: 0 / 0, NaN, above no threshold.)
            if union > 0 and inter / union > iou:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


def _nms_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Boxes NMS meets: random, clustered, image-and-class groups shifted apart (as a batch's),
    long suppression chains, edges that only touch, empty and inverted boxes; scores with many
    ties (rounded)."""
    generator = torch.Generator().manual_seed(5)
    cases: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def scores(n: int) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 20).round() / 20

    xy = torch.rand(300, 2, generator=generator) * 200
    wh = torch.rand(300, 2, generator=generator) * 60 + 1
    cases["random"] = torch.cat([xy, xy + wh], dim=1), scores(300)
    centers = torch.rand(12, 2, generator=generator) * 200
    xy = centers[torch.randint(0, 12, (400,), generator=generator)]
    xy = xy + torch.randn(400, 2, generator=generator) * 3
    cases["clustered"] = torch.cat([xy, xy + 20], dim=1), scores(400)
    group = torch.randint(0, 40, (400,), generator=generator)
    xy = torch.rand(400, 2, generator=generator) * 50 + group[:, None] * 80.0
    cases["shifted groups"] = torch.cat([xy, xy + 15], dim=1), scores(400)
    x = torch.arange(300, dtype=torch.float64)
    chain = torch.stack([x, torch.zeros(300), x + 3, torch.ones(300)], dim=1)
    cases["chain"] = chain, torch.linspace(1, 0, 300)
    x = torch.arange(200, dtype=torch.float64).repeat_interleave(2) * 10
    cases["touching"] = torch.stack([x, x * 0, x + 10, x * 0 + 10], dim=1), scores(400)
    xy = (torch.rand(200, 2, generator=generator) * 100).round()
    wh = (torch.rand(200, 2, generator=generator) * 8 - 3).round()  # empty and inverted too
    cases["degenerate"] = torch.cat([xy, xy + wh], dim=1), scores(200)
    return cases


@pytest.mark.parametrize("small_blocks", [False, True])
@pytest.mark.parametrize("iou", [0.0, 0.45, 0.7, -0.1])
def test_nms_is_greedy_nms_exactly(
    monkeypatch: pytest.MonkeyPatch, small_blocks: bool, iou: float
) -> None:
    """The fallback keeps exactly the boxes a plain greedy loop keeps, in its order, whether a
    batch is cut into runs and chunks or resolved whole, by matrix passes or box by box."""
    import inspection.nms_fallback as runtime

    if small_blocks:
        monkeypatch.setattr(runtime, "_NMS_BLOCK", 32)
        monkeypatch.setattr(runtime, "_NMS_FIRST_BLOCK", 8)
        monkeypatch.setattr(runtime, "_NMS_CHUNK", 16)
        monkeypatch.setattr(runtime, "_NMS_SPLIT_FROM", 16)
        monkeypatch.setattr(runtime, "_NMS_PASSES", 2)
    for name, (boxes, scores) in _nms_cases().items():
        expected = _greedy_loop(boxes, scores, iou)
        assert runtime.nms_reference(boxes, scores, iou).tolist() == expected, name
        shuffled = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(1))
        kept = runtime.nms_reference(boxes[shuffled], scores[shuffled], iou)
        assert kept.tolist() == _greedy_loop(boxes[shuffled], scores[shuffled], iou), name


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


def test_a_font_a_full_disk_cut_short_is_copied_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The font ultralytics' plotting asks for was copied into the data folder in place: a disk
    that filled as it was copied left the file cut short, taken for the font at every start
    after. It is now copied under another name and renamed once whole. (The full disk is
    simulated: a copy that writes a few bytes and raises ENOSPC.)"""
    import errno
    import shutil

    copyfile = shutil.copyfile

    def filling(source: Path, target: Path) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", filling)
    with pytest.raises(OSError):
        configure_ultralytics(tmp_path / "cfg", tmp_path / "runs")
    monkeypatch.setattr(shutil, "copyfile", copyfile)  # (space freed)
    configure_ultralytics(tmp_path / "cfg", tmp_path / "runs")
    fonts = [p for p in (tmp_path / "cfg").rglob("*") if p.is_file() and p.suffix != ".json"]
    assert sorted(p.name for p in fonts) == sorted(["Arial.Unicode.ttf", "Arial.ttf"] * 2)
    assert len({p.read_bytes() for p in fonts}) == 1 and fonts[0].stat().st_size > 100


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


@pytest.mark.parametrize("given", [None, "2"])
def test_importing_ultralytics_leaves_the_threads_variable_to_the_processes_started_after(
    given: str | None,
) -> None:
    """ultralytics' import set OMP_NUM_THREADS=1 where it was unset, and every process started
    after it inherited the variable: a spawned worker's torch ran on one thread (2 on a 2-core
    station without), and so did this process's where ultralytics imported torch first."""
    import subprocess
    import sys

    threads = "import os, torch; print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())"
    script = f"""
import os, subprocess, sys
import inspection
import ultralytics
import torch
print(os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())
sys.stdout.flush()
subprocess.run([sys.executable, "-c", {threads!r}], check=True)
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if given is not None:
        env["OMP_NUM_THREADS"] = given

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=Path(__file__).parents[1],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    alone = run(threads)  # (a process that never imported ultralytics, nor was started by one)
    assert alone.split()[0] == str(given)
    assert run(script).splitlines() == [alone, alone]

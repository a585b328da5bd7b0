"""Tiny synthetic surface images with known defects, written in VOC, YOLO and COCO formats.

Each image is a noisy grey texture; a "scratch" is a thin bright bar and a "spot" a dark
square. Some images have no defect (good parts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLASSES = ["scratch", "spot"]


@dataclass
class SyntheticImage:
    name: str
    size: int
    boxes: list[tuple[str, int, int, int, int]]  # class, x1, y1, x2, y2


def make_images(
    folder: Path,
    n: int = 24,
    size: int = 64,
    good_every: int = 4,
    seed: int = 0,
    classes: list[str] = CLASSES,
) -> list[SyntheticImage]:
    """`classes`: CLASSES, or CLASSES and "crack" (a thin dark vertical line), a new defect
    type for a detector of CLASSES."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made: list[SyntheticImage] = []
    for i in range(n):
        pixels = rng.normal(128, 12, (size, size)).clip(0, 255)
        boxes: list[tuple[str, int, int, int, int]] = []
        if i % good_every != 0:
            kind = classes[i % len(classes)]
            if kind == "crack":
                x1, y1 = int(rng.integers(4, size - 8)), int(rng.integers(4, size // 3))
                x2, y2 = x1 + 3, y1 + size // 2
                pixels[y1:y2, x1:x2] = 60
            elif kind == "scratch":
                x1, y1 = int(rng.integers(4, size // 3)), int(rng.integers(4, size - 12))
                x2, y2 = x1 + size // 2, y1 + 6
                pixels[y1:y2, x1:x2] = 240
            else:
                x1, y1 = int(rng.integers(4, size - 24)), int(rng.integers(4, size - 24))
                x2, y2 = x1 + 16, y1 + 16
                pixels[y1:y2, x1:x2] = 20
            boxes.append((kind, x1, y1, x2, y2))
        name = f"part_{i:03d}.png"
        Image.fromarray(pixels.astype(np.uint8), mode="L").convert("RGB").save(folder / name)
        made.append(SyntheticImage(name, size, boxes))
    return made


def write_voc(root: Path, **kwargs: Any) -> list[SyntheticImage]:
    images = make_images(root / "images", **kwargs)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for image in images:
        if not image.boxes:
            continue  # a good part has no annotation file
        objects = "".join(
            f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2 in image.boxes
        )
        (root / "annotations" / f"{Path(image.name).stem}.xml").write_text(
            f"<annotation><filename>{image.name}</filename><size><width>{image.size}</width>"
            f"<height>{image.size}</height><depth>3</depth></size>{objects}</annotation>"
        )
    return images


def write_yolo(root: Path, **kwargs: int) -> list[SyntheticImage]:
    images = make_images(root / "images" / "train", **kwargs)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    for image in images:
        lines = [
            f"{CLASSES.index(c)} {(x1 + x2) / 2 / image.size} {(y1 + y2) / 2 / image.size} "
            f"{(x2 - x1) / image.size} {(y2 - y1) / image.size}\n"
            for c, x1, y1, x2, y2 in image.boxes
        ]
        (root / "labels" / "train" / f"{Path(image.name).stem}.txt").write_text("".join(lines))
    (root / "data.yaml").write_text(
        "names:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(CLASSES))
    )
    return images


def write_coco(root: Path, **kwargs: int) -> list[SyntheticImage]:
    images = make_images(root / "images", **kwargs)
    annotations = []
    for image_id, image in enumerate(images):
        for c, x1, y1, x2, y2 in image.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CLASSES.index(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    coco = {
        "images": [
            {"id": i, "file_name": im.name, "width": im.size, "height": im.size}
            for i, im in enumerate(images)
        ],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return images


def write_splits(folder: Path, images: list[SyntheticImage]) -> Path:
    """Every 6th image to val, every 6th (offset 3) to test, the rest to train."""
    folder.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, image in enumerate(images):
        split = "val" if i % 6 == 1 else "test" if i % 6 == 4 else "train"
        splits[split].append(image.name)
    for split, names in splits.items():
        (folder / f"{split}.txt").write_text("\n".join(names) + "\n")
    return folder


def write_deeppcb(root: Path, boards: int = 8, test: int = 2, seed: int = 0) -> Path:
    """DeepPCB's layout: PCBData/group1/1/<N>_test.jpg (a board with one defect, its box in
    group1/1_not/<N>.txt, `x1 y1 x2 y2 type`, types from 1) and <N>_temp.jpg (the same board
    defect-free); trainval.txt lists all but the last `test` boards, test.txt those."""
    rng = np.random.default_rng(seed)
    data = root / "PCBData"
    images, boxes = data / "group1" / "1", data / "group1" / "1_not"
    images.mkdir(parents=True, exist_ok=True)
    boxes.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(boards):
        board = np.full((64, 64), 255, np.uint8)
        board[8:56:8, :] = 0  # traces
        board[60, n % 64] = 0  # each board its own (real templates differ)
        Image.fromarray(board).save(images / f"{100 + n}_temp.jpg")
        x1, y1 = int(rng.integers(4, 40)), int(rng.integers(4, 40))
        board[y1 : y1 + 12, x1 : x1 + 12] = 0 if n % 2 else 255
        Image.fromarray(board).save(images / f"{100 + n}_test.jpg")
        (boxes / f"{100 + n}.txt").write_text(f"{x1} {y1} {x1 + 12} {y1 + 12} {n % 6 + 1}\n")
        lines.append(f"group1/1/{100 + n}.jpg group1/1_not/{100 + n}.txt\n")
    (data / "trainval.txt").write_text("".join(lines[: boards - test]))
    (data / "test.txt").write_text("".join(lines[boards - test :]))
    return data

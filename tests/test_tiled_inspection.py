"""A station judges a part larger than a tile tile by tile, its detections in the part's pixels."""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inspection.backends.base import Backend
from inspection.engine import Inspector, PartInput, merge_tiles, parse_tile
from inspection.errors import UserError
from inspection.images import Tiled, prepare_parts
from inspection.tiling import CHECKPOINT_KEY, ONNX_METADATA_KEY, TileSpec, tile_grid
from inspection.verdict import Detection, Thresholds
from tests.conftest import Trained
from tests.synthetic import CLASSES, make_images

# A one-epoch model is barely confident: judged at a threshold its outputs reach.
LOW = {"default": 0.001, "iou": 0.45}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiled_copy(weights: Path, folder: Path, spec: TileSpec) -> Path:
    """The tiny detector's checkpoint with a grid recorded, as a tiled model carries it."""
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    ckpt[CHECKPOINT_KEY] = spec.to_json()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "tiled.pt")
    return folder / "tiled.pt"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Synthetic 64 px parts (a defect on most), as grey-level arrays."""
    folder = tmp_path_factory.mktemp("parts")
    return [np.asarray(Image.open(folder / m.name).convert("L")) for m in make_images(folder, n=8)]


@pytest.fixture(scope="module")
def tiled_weights(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiled_copy(trained.weights, tmp_path_factory.mktemp("tiled"), TileSpec(64, 0.0))


def _mosaic(parts: list[np.ndarray], columns: int, rows: int) -> np.ndarray:
    """Parts side by side, each exactly one tile of a 64 px grid without overlap."""
    return np.block([[parts[r * columns + c] for c in range(columns)] for r in range(rows)])


def _inspect(inspector: Inspector, pixels: np.ndarray) -> list[Detection]:
    try:
        return inspector.inspect_one("part.png", _png(pixels)).detections
    finally:
        inspector.close()


def _box(d: Detection) -> tuple[float, float, float, float]:
    return (d.x1, d.y1, d.x2, d.y2)


def _near(d: Detection, among: list[Detection]) -> bool:
    """`d` is one of `among`, within float rounding."""
    return any(
        d.class_name == o.class_name
        and d.counted == o.counted
        and d.confidence == pytest.approx(o.confidence, abs=1e-4)
        and _box(d) == pytest.approx(_box(o), abs=0.05)
        for o in among
    )


def _inside(d: Detection, x0: int, y0: int, size: int) -> bool:
    return x0 <= d.x1 and d.x2 <= x0 + size and y0 <= d.y1 and d.y2 <= y0 + size


def test_a_large_part_is_judged_in_tiles_each_tile_as_that_image_alone(
    tiled_weights: Path, parts: list[np.ndarray]
) -> None:
    large = _mosaic(parts[:6], columns=3, rows=2)  # 192 x 128: six tiles of 64
    tiled = Inspector.from_weights(tiled_weights, LOW, backend="pytorch")
    assert tiled.tile == TileSpec(64, 0.0)
    assert tiled.tiling_note() == "judging in 64 px tiles, 0% overlap"
    found = _inspect(tiled, large)
    assert found and len(found) <= 300
    grid = tile_grid(192, 128, TileSpec(64, 0.0))
    moved = []
    for index, (x0, y0, _, _) in enumerate(grid):
        alone = _inspect(
            Inspector.from_weights(tiled_weights, LOW, backend="pytorch"), parts[index]
        )
        # The tile's own detections, moved by its offset into the part's pixels.
        moved.append(
            [replace(a, x1=a.x1 + x0, y1=a.y1 + y0, x2=a.x2 + x0, y2=a.y2 + y0) for a in alone]
        )
    # Each one kept, gone as the duplicate of a kept one as confident of its class, or fused
    # with the pieces of it that tiles across an edge found.
    expected = merge_tiles(moved, grid, LOW["iou"])
    assert len(found) == len(expected) and all(_near(d, expected) for d in found)
    # In falling confidence, as a whole part's.
    assert [d.confidence for d in found] == sorted((d.confidence for d in found), reverse=True)


def test_tile_off_judges_the_part_whole(
    trained: Trained, tiled_weights: Path, parts: list[np.ndarray]
) -> None:
    large = _mosaic(parts[:6], columns=3, rows=2)
    whole = _inspect(Inspector.from_weights(trained.weights, LOW, backend="pytorch"), large)
    off = Inspector.from_weights(tiled_weights, LOW, backend="pytorch", tile="off")
    assert off.tile is None and off.tiling_note() is None
    assert _inspect(off, large) == whole
    # And another grid than the model's: a model of small crops judging at their resolution.
    untiled = Inspector.from_weights(
        trained.weights, LOW, backend="pytorch", tile=TileSpec(64, 0.0)
    )
    assert untiled.tile == TileSpec(64, 0.0)
    assert _inspect(untiled, large) != whole


def test_a_part_no_larger_than_a_tile_is_judged_as_before(
    trained: Trained, tiled_weights: Path, parts: list[np.ndarray]
) -> None:
    before = _inspect(Inspector.from_weights(trained.weights, LOW, backend="pytorch"), parts[1])
    tiled = _inspect(Inspector.from_weights(tiled_weights, LOW, backend="pytorch"), parts[1])
    assert tiled == before


def test_an_object_seen_by_overlapping_tiles_is_kept_once(
    trained: Trained, parts: list[np.ndarray]
) -> None:
    # 96 x 64 in tiles of 64 at half overlap: two tiles, sharing the band x 32 to 64.
    strip = np.concatenate([parts[1], parts[2][:, :32]], axis=1)
    spec = TileSpec(64, 0.5)
    assert tile_grid(96, 64, spec) == [(0, 0, 64, 64), (32, 0, 96, 64)]
    found = _inspect(Inspector.from_weights(trained.weights, LOW, tile=spec), strip)
    assert found
    box = [_box(d) for d in found]
    for i, a in enumerate(found):
        for j in range(i + 1, len(found)):
            if a.class_name == found[j].class_name:
                assert _iou(box[i], box[j]) <= LOW["iou"] + 1e-6


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_merging_keeps_the_most_confident_of_a_class_and_every_other_object() -> None:
    found = [
        Detection("spot", 0.5, 40, 10, 56, 26, counted=True),  # from the left tile
        Detection("spot", 0.7, 41, 10, 57, 26, counted=True),  # the same spot, right tile
        Detection("scratch", 0.4, 41, 10, 57, 26, counted=True),  # another class there
        Detection("spot", 0.6, 80, 40, 90, 50, counted=False),  # elsewhere
    ]
    grid = [(0, 0, 64, 64), (32, 0, 96, 64)]
    assert merge_tiles([found[:1], found[1:]], grid, 0.45) == [found[1], found[3], found[2]]
    assert merge_tiles([[], []], grid, 0.45) == []
    faint = [Detection("spot", 0.5, 10 * i, 0, 10 * i + 5, 5, counted=False) for i in range(400)]
    assert len(merge_tiles([faint], [(0, 0, 4000, 5)], 0.45)) == 300


def test_a_long_strips_every_counted_defect_is_kept_and_each_failed_class_named() -> None:
    """A strip of many tiles can hold more defects than a whole part's cap: the least confident
    class's boxes were all dropped, and the class with them from the part's failed classes."""
    sure = [Detection("spot", 0.9, 10 * i, 0, 10 * i + 5, 5, counted=True) for i in range(350)]
    faint_class = [
        Detection("scratch", 0.3, 10 * i, 50, 10 * i + 5, 55, counted=True) for i in range(20)
    ]
    below = [Detection("spot", 0.1, 10 * i, 90, 10 * i + 5, 95, counted=False) for i in range(5)]
    merged = merge_tiles([sure + faint_class + below], [(0, 0, 3500, 100)], 0.45)
    assert len(merged) == 370
    assert {d.class_name for d in merged if d.counted} == {"spot", "scratch"}
    assert all(d.counted for d in merged)  # over the cap already: none below it kept


def _spot(x1: float, y1: float, x2: float, y2: float, confidence: float = 0.8) -> Detection:
    return Detection("spot", confidence, x1, y1, x2, y2, counted=confidence >= 0.25)


def test_a_defect_wider_than_the_shared_band_is_one_box_not_two() -> None:
    """Cut by a tile edge, a defect larger than the band two tiles share lay whole in neither:
    the two pieces overlapped too little for NMS, and the part showed (and asked a reviewer
    about) two defects."""
    grid = tile_grid(112, 64, TileSpec(64, 0.25))
    assert grid == [(0, 0, 64, 64), (48, 0, 112, 64)]  # the band: x 48 to 64
    left, right = _spot(10, 20, 64, 30, 0.6), _spot(48, 21, 100, 31, 0.8)
    other_class = Detection("scratch", 0.7, 48, 20, 60, 30, counted=True)  # not a spot's piece
    apart = [_spot(2, 40, 20, 55), _spot(90, 40, 105, 55)]  # two spots, one in each tile
    alone = _spot(50, 45, 64, 50, 0.5)  # cut by the edge, but nothing across it meets it
    merged = merge_tiles(
        [[left, apart[0], alone], [right, other_class, apart[1]]], grid, LOW["iou"]
    )
    assert merged == [
        _spot(10, 20, 100, 31, 0.8),  # the union, at the higher confidence
        _spot(2, 40, 20, 55),
        _spot(90, 40, 105, 55),
        other_class,
        alone,
    ]
    # Two faint pieces make one faint box: counted only where a piece was.
    faint = merge_tiles([[_spot(10, 20, 64, 30, 0.1)], [_spot(48, 20, 100, 30, 0.2)]], grid, 0.45)
    assert faint == [_spot(10, 20, 100, 30, 0.2)] and not faint[0].counted
    # A counted piece is not grown by a faint box across the edge: below its class's threshold,
    # a model's faint boxes cover much of a part, and a defect's box spread over them.
    sure, spread = _spot(40, 20, 64, 30, 0.6), _spot(48, 0, 112, 64, 0.1)
    assert merge_tiles([[sure], [spread]], grid, 0.45) == [sure, spread]


def test_a_clipped_piece_more_confident_than_a_neighbours_whole_box_does_not_shrink_it() -> None:
    """NMS kept the clipped piece (the more confident) and dropped the whole box it overlaps:
    the box shown was half the defect."""
    grid = tile_grid(112, 64, TileSpec(64, 0.25))
    piece, whole = _spot(52, 10, 64, 20, 0.9), _spot(52, 10, 76, 20, 0.6)
    assert merge_tiles([[piece], [whole]], grid, 0.45) == [_spot(52, 10, 76, 20, 0.9)]
    assert merge_tiles([[whole], []], grid, 0.45) == [whole]  # (a box alone: as it was)


def test_a_scratch_across_a_strip_of_tiles_is_one_box() -> None:
    grid = tile_grid(160, 64, TileSpec(64, 0.25))
    assert grid == [(0, 0, 64, 64), (48, 0, 112, 64), (96, 0, 160, 64)]
    pieces = [[_spot(2, 30, 64, 36, 0.5)], [_spot(48, 30, 112, 37, 0.7)], [_spot(96, 29, 158, 36)]]
    assert merge_tiles(pieces, grid, 0.45) == [_spot(2, 29, 158, 37, 0.8)]
    # Without overlap, the pieces meet at the edge; a spot short of it is not one of them.
    grid = tile_grid(128, 64, TileSpec(64, 0.0))
    assert grid == [(0, 0, 64, 64), (64, 0, 128, 64)]
    merged = merge_tiles(
        [[_spot(40, 10, 64, 20, 0.5), _spot(10, 40, 30, 50)], [_spot(64, 10, 90, 20, 0.6)]],
        grid,
        0.45,
    )
    assert merged == [_spot(10, 40, 30, 50), _spot(40, 10, 90, 20, 0.6)]


def test_two_defects_side_by_side_across_a_tile_edge_stay_two() -> None:
    """A defect ending where its tile does and another beginning there, found whole by the next
    tile, met at the edge and were chained into one box: on strips of images side by side, the
    crazing of neighbouring images became one box twice an image wide."""
    grid = tile_grid(360, 200, TileSpec(200, 0.2))
    assert grid[:2] == [(0, 0, 200, 200), (160, 0, 360, 200)]  # the band: x 160 to 200
    first, second = _spot(0, 10, 200, 190, 0.7), _spot(200, 12, 358, 188, 0.6)
    share = _spot(160, 10, 199, 190, 0.5)  # the right tile's piece of the first: cut at 160
    merged = merge_tiles([[first], [share, second]], grid, 0.45)
    assert merged == [_spot(0, 10, 200, 190, 0.7), second]


def test_a_defect_at_the_corner_of_four_tiles_is_one_box() -> None:
    grid = tile_grid(112, 112, TileSpec(64, 0.25))
    assert len(grid) == 4
    pieces = [
        [_spot(30, 30, 64, 64, 0.4)],
        [_spot(48, 31, 90, 64, 0.5)],
        [_spot(29, 48, 64, 90, 0.3)],
        [_spot(48, 48, 91, 89, 0.6), _spot(100, 100, 110, 110, 0.3)],
    ]
    assert merge_tiles(pieces, grid, 0.45) == [
        _spot(29, 30, 91, 90, 0.6),
        _spot(100, 100, 110, 110, 0.3),
    ]


def test_a_box_a_diagonal_tile_cuts_across_the_other_axis_is_another_defect() -> None:
    """Of a 2x2 grid: a defect ending at the top-left tile's right edge, and beside it another
    that the bottom-right tile cuts by its top edge. That tile reaches past the first's right
    edge and the first reaches past its top one, so each counted as cut "facing" the other,
    and the two (with every piece of each) were chained into one box."""
    grid = tile_grid(112, 112, TileSpec(64, 0.25))
    assert grid == [(0, 0, 64, 64), (48, 0, 112, 64), (0, 48, 64, 112), (48, 48, 112, 112)]
    first = [_spot(40, 50, 64, 60, 0.7), _spot(48, 50, 64, 60, 0.6)]  # ends at x 64
    second = [_spot(64, 20, 100, 58, 0.5), _spot(64, 48, 100, 58, 0.5)]  # goes on above y 48
    per_tile = [[first[0]], [first[1], second[0]], [first[0]], [first[1], second[1]]]
    assert merge_tiles(per_tile, grid, 0.45) == [first[0], second[0]]


def test_a_defect_whose_rest_only_the_diagonal_tile_found_is_one_box() -> None:
    """A thin defect through the very corner of four tiles without overlap: the top-left and
    bottom-right tiles each hold a piece, cut by the edges that face each other."""
    grid = tile_grid(128, 128, TileSpec(64, 0.0))
    assert grid == [(0, 0, 64, 64), (64, 0, 128, 64), (0, 64, 64, 128), (64, 64, 128, 128)]
    per_tile = [[_spot(50, 50, 64, 64, 0.5)], [], [], [_spot(64, 64, 80, 80, 0.7)]]
    assert merge_tiles(per_tile, grid, 0.45) == [_spot(50, 50, 80, 80, 0.7)]


def test_tiles_above_and_below_fuse_as_tiles_side_by_side_do() -> None:
    """A vertical cut: a defect across it is one box, one ending at the edge beside another
    that the lower tile sees whole stays two; a box at the part's own edge is cut by nothing."""
    grid = tile_grid(64, 112, TileSpec(64, 0.25))
    assert grid == [(0, 0, 64, 64), (0, 48, 64, 112)]  # the band: y 48 to 64
    across = [[_spot(10, 20, 30, 64, 0.6)], [_spot(11, 48, 30, 100, 0.7)]]
    assert merge_tiles(across, grid, 0.45) == [_spot(10, 20, 30, 100, 0.7)]
    ending, below = _spot(10, 20, 30, 64, 0.6), _spot(8, 64, 32, 100, 0.7)
    share = _spot(10, 48, 30, 64, 0.5)  # the lower tile's piece of the first: cut at 48
    assert merge_tiles([[ending], [share, below]], grid, 0.45) == [below, ending]
    # At the part's left and right edges (x 0 and 64): two defects, not pieces of one.
    edges = [[_spot(0, 30, 20, 40, 0.6)], [_spot(44, 50, 64, 60, 0.7)]]
    assert merge_tiles(edges, grid, 0.45) == [_spot(44, 50, 64, 60, 0.7), _spot(0, 30, 20, 40, 0.6)]


def test_a_piece_wholly_inside_the_shared_band_fuses_with_the_box_that_holds_it() -> None:
    """A piece cut by its tile's edge, lying in the band: the neighbour's box that holds it is
    the same defect; a box beside it there, holding none of it, is not."""
    grid = tile_grid(112, 64, TileSpec(64, 0.25))
    piece, whole = _spot(52, 10, 64, 20, 0.6), _spot(52, 10, 70, 20, 0.5)
    beside = _spot(64, 22, 90, 40, 0.7)  # meets the piece's corner, holds none of it
    assert merge_tiles([[piece], [whole, beside]], grid, 0.45) == [
        beside,
        _spot(52, 10, 70, 20, 0.6),
    ]


def _tiles_found(
    per_side: int, objects: int, seed: int, iou: float = 0.45
) -> tuple[list[list[Detection]], list[tuple[int, int, int, int]]]:
    """Hand-made detections of a part of `per_side` x `per_side` tiles of 64 px at 25%
    overlap, as its tiles report them: objects of two classes strewn over it, each tile's
    boxes clipped at its edges with its own confidence, through its own NMS (as
    `postprocess` gives a tile's)."""
    import torch
    import torchvision

    side = 64 + (per_side - 1) * 48
    grid = tile_grid(side, side, TileSpec(64, 0.25))
    rng = np.random.default_rng(seed)
    centre, size = rng.uniform(0, side, (objects, 2)), rng.uniform(4, 30, (objects, 2))
    spread = np.concatenate([centre - size / 2, centre + size / 2], axis=1).clip(0, side)
    classes = rng.integers(0, 2, objects)
    per_tile = []
    for x0, y0, x1, y1 in grid:
        seen = np.flatnonzero(
            (spread[:, 0] < x1) & (spread[:, 2] > x0) & (spread[:, 1] < y1) & (spread[:, 3] > y0)
        )
        boxes = spread[seen] + rng.uniform(-0.5, 0.5, (len(seen), 4))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(x0, x1)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(y0, y1)
        scores = rng.uniform(0.05, 0.95, len(seen))
        kept = torchvision.ops.batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes[seen]), iou
        ).tolist()
        per_tile.append(
            [
                Detection(
                    ["spot", "scratch"][classes[seen[k]]],
                    float(scores[k]),
                    *boxes[k].tolist(),
                    counted=bool(scores[k] >= 0.25),
                )
                for k in kept
            ]
        )
    return per_tile, grid


def _nms_over_every_pair(
    per_tile: list[list[Detection]], grid: list[tuple[int, int, int, int]], iou: float
) -> list[Detection]:
    """The merge as class-aware NMS over all of a part's fused boxes (what it gives, written
    the slow way)."""
    import torch
    import torchvision

    from inspection.engine import MAX_DETECTIONS
    from inspection.tiling import fuse_cut_boxes

    found = fuse_cut_boxes(per_tile, grid)
    kept = torchvision.ops.batched_nms(
        torch.tensor([_box(d) for d in found], dtype=torch.float64),
        torch.tensor([d.confidence for d in found], dtype=torch.float64),
        torch.tensor([["spot", "scratch"].index(d.class_name) for d in found]),
        iou,
    ).tolist()
    merged: list[Detection] = []
    for i in kept:
        if found[i].counted or len(merged) < MAX_DETECTIONS:
            merged.append(found[i])
    return merged


@pytest.mark.parametrize("seed", range(6))
def test_the_merge_keeps_what_nms_over_every_pair_of_boxes_keeps(seed: int) -> None:
    """Comparing only boxes that can be duplicates (boxes of other tiles where tiles meet, and
    fused boxes) gives NMS's very result over the whole part."""
    per_tile, grid = _tiles_found(per_side=4, objects=120 + 40 * seed, seed=seed)
    expected = _nms_over_every_pair(per_tile, grid, 0.45)
    assert sum(map(len, per_tile)) > len(expected)  # (duplicates where tiles meet went)
    assert merge_tiles(per_tile, grid, 0.45) == expected


def test_a_tiles_own_boxes_are_kept_as_the_tile_alone_gives_them() -> None:
    """A tile's boxes went through its own NMS, before they were clipped to the image: two it
    kept stay, as a part judged whole keeps them, even where clipping made them overlap more;
    only boxes of other tiles are compared with them (NMS over every pair of a part's boxes
    took seconds for a large frame that a model fires all over)."""
    grid = tile_grid(112, 64, TileSpec(64, 0.25))
    # (-40, 10, 30, 40) against (0, 10, 34, 40): IoU 0.41, both kept by the tile's NMS; the
    # first clipped at the part's edge, 0.88.
    one, other = _spot(0, 10, 30, 40, 0.9), _spot(0, 10, 34, 40, 0.5)
    seen_twice = [_spot(50, 50, 60, 60, 0.6), _spot(50, 50, 61, 60, 0.4)]  # in the shared band
    merged = merge_tiles([[one, other, seen_twice[0]], [seen_twice[1]]], grid, 0.45)
    assert merged == [one, seen_twice[0], other]


def test_a_station_fuses_the_pieces_its_tiles_find_of_one_defect(
    trained: Trained, parts: list[np.ndarray]
) -> None:
    """Through the engine: a strip's detections are its tiles' own, each tile judged alone,
    merged tile by tile, so that pieces a tile edge cut are fused where the tiles meet."""
    strip = np.concatenate([parts[1], parts[2], parts[3][:, :32]], axis=1)  # 160 x 64
    spec = TileSpec(64, 0.25)
    grid = tile_grid(160, 64, spec)
    found = _inspect(Inspector.from_weights(trained.weights, LOW, tile=spec), strip)
    alone = []
    for x0, y0, x1, y1 in grid:
        whole = Inspector.from_weights(trained.weights, LOW, backend="pytorch", tile="off")
        alone.append(
            [
                replace(a, x1=a.x1 + x0, y1=a.y1 + y0, x2=a.x2 + x0, y2=a.y2 + y0)
                for a in _inspect(whole, strip[y0:y1, x0:x1])
            ]
        )
    expected = merge_tiles(alone, grid, LOW["iou"])
    pieces = [d for tile in alone for d in tile]
    assert any(not _near(d, pieces) for d in expected)  # (some boxes are fused pieces)
    assert len(found) == len(expected)
    assert all(_near(d, expected) for d in found)


def test_a_tiled_part_crosses_from_a_decoding_process_as_no_more_than_its_image(
    parts: list[np.ndarray],
) -> None:
    """Tiles letterboxed up front, a frame cut into tiles far smaller than the model's input
    would cross as every tile at the model's size."""
    large = np.tile(parts[1], (4, 8))  # 512 x 256
    [(image, error, kept, stored, _)] = prepare_parts([_png(large)], 640, False, None, TileSpec(32))
    assert error is None and kept is None and stored is None
    assert isinstance(image, Tiled) and image.original_shape == (256, 512)
    assert len(image.grid) == len(tile_grid(512, 256, TileSpec(32)))
    assert len(pickle.dumps(image)) < 2 * large.size
    first = image.letterboxed_tile(0, 640)
    assert first.pixels.shape == (3, 640, 640) and first.original_shape == (32, 32)


@pytest.mark.parametrize("processes", [0, 1])
def test_decoding_processes_give_the_same_tiled_verdicts(
    tiled_weights: Path, parts: list[np.ndarray], processes: int
) -> None:
    large = _mosaic(parts[:6], columns=3, rows=2)
    items = [PartInput(f"{i}.png", _png(np.roll(large, 8 * i, axis=1))) for i in range(3)]
    inspector = Inspector.from_weights(
        tiled_weights, LOW, backend="pytorch", prepare_processes=processes, batch_size=4
    )
    try:
        results = list(inspector.inspect(items))
        assert inspector.prepare_processes == processes  # (not fallen back to threads)
    finally:
        inspector.close(wait=True)
    threads = Inspector.from_weights(tiled_weights, LOW, backend="pytorch", batch_size=4)
    try:
        expected = list(threads.inspect(items))
    finally:
        threads.close()
    assert [(r.verdict, r.detections, r.width, r.height) for r in results] == [
        (r.verdict, r.detections, r.width, r.height) for r in expected
    ]
    assert all(r.width == 192 and r.height == 128 for r in results)


def test_an_onnx_export_carries_its_grid_and_a_fixed_batch_takes_one_tile_at_a_time(
    tiled_weights: Path, parts: list[np.ndarray], tmp_path: Path
) -> None:
    import shutil

    import onnx

    from inspection.backends.onnx_backend import OnnxBackend
    from training.export import export_detector

    weights = Path(shutil.copy2(tiled_weights, tmp_path / "tiled.pt"))
    exported = export_detector(weights)  # a fixed batch of one
    model = onnx.load(str(exported))
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(TileSpec(64, 0.0).to_json())
    onnx.save(model, str(exported))
    backend = OnnxBackend(exported)
    assert backend.tile == TileSpec(64, 0.0) and backend.max_batch == 1
    large = _mosaic(parts[:6], columns=3, rows=2)
    by_onnx = _inspect(Inspector(backend, Thresholds.from_dict(LOW, backend.class_names)), large)
    by_torch = _inspect(Inspector.from_weights(tiled_weights, LOW, backend="pytorch"), large)
    assert [d.class_name for d in by_onnx] == [d.class_name for d in by_torch]
    for a, b in zip(by_onnx, by_torch, strict=True):
        assert (a.x1, a.y1, a.x2, a.y2) == pytest.approx((b.x1, b.y1, b.x2, b.y2), abs=0.5)


def test_a_model_whose_recorded_grid_cannot_be_used_is_named(
    trained: Trained, tmp_path: Path
) -> None:
    import torch

    ckpt = torch.load(trained.weights, map_location="cpu", weights_only=False)
    ckpt[CHECKPOINT_KEY] = {"size": 4}
    torch.save(ckpt, tmp_path / "odd.pt")
    with pytest.raises(
        UserError, match=r"odd\.pt: unreadable tile setting .*: tile size 4: at least 32"
    ):
        Inspector.from_weights(tmp_path / "odd.pt", backend="pytorch")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256", TileSpec(256, 0.2)),
        ("200:0", TileSpec(200, 0.0)),
        ("256:0.25", TileSpec(256, 0.25)),
        ("256:20%", TileSpec(256, 0.2)),
        ("off", "off"),
        (" OFF ", "off"),
        ("model", "model"),
    ],
)
def test_tile_option_values(text: str, expected: object) -> None:
    assert parse_tile(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("big", "--tile big: give SIZE[:OVERLAP]"),
        ("256:x", "--tile 256:x: give SIZE[:OVERLAP]"),
        ("", "--tile : give SIZE[:OVERLAP]"),
        ("8", "--tile 8: tile size 8: at least 32 pixels"),
        ("256:20", "--tile 256:20: tile overlap 20.0: from 0 to 0.9"),
        ("256:-1%", "--tile 256:-1%: tile overlap -0.01: from 0 to 0.9"),
        ("256:nan", "--tile 256:nan: tile overlap nan: from 0 to 0.9"),
    ],
)
def test_bad_tile_option_values_say_why(text: str, message: str) -> None:
    with pytest.raises(UserError) as raised:
        parse_tile(text)
    assert str(raised.value).startswith(message)


@pytest.fixture
def station(
    database_url: str, tiled_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A database whose production detector is the tiny one with a 64 px grid; the command
    line's database."""
    from inspection.settings import get_settings
    from tests.conftest import register_production_detector

    register_production_detector(database_url, tiled_weights, tmp_path / "models")
    monkeypatch.setenv("DEFECTS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    return database_url


def _stored_points(url: str) -> list[dict]:  # type: ignore[type-arg]
    from sqlalchemy import select

    from db.models import Inspection
    from db.session import session_scope

    with session_scope(url) as session:
        return [i.thresholds for i in session.scalars(select(Inspection).order_by(Inspection.id))]


def test_inspect_says_it_tiles_and_another_grid_judges_a_part_again(
    station: str, parts: list[np.ndarray], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    image = tmp_path / "strip.png"
    image.write_bytes(_png(_mosaic(parts[:6], columns=3, rows=2)))
    runner = CliRunner()
    first = runner.invoke(app, ["inspect", str(image), "--backend", "pytorch", "--json"])
    assert first.exit_code == 0, first.output
    assert first.stderr.strip() == "judging in 64 px tiles, 0% overlap"
    assert json.loads(first.stdout)[0]["verdict"] in {"pass", "fail"}
    # The model's own grid: judged once, stored at the point as it always was.
    again = runner.invoke(app, ["inspect", str(image), "--backend", "pytorch"])
    assert "judged again" not in again.output
    whole = runner.invoke(app, ["inspect", str(image), "--backend", "pytorch", "--tile", "off"])
    assert whole.exit_code == 0, whole.output
    assert "judging in" not in whole.output
    assert "1 part(s) judged earlier at other thresholds (or in another --tile grid" in " ".join(
        whole.output.split()
    )
    points = _stored_points(station)
    assert len(points) == 2 and "tile" not in points[0] and points[1]["tile"] == "off"
    assert {k: v for k, v in points[1].items() if k != "tile"} == points[0]


def test_a_part_no_larger_than_a_tile_of_either_grid_is_not_judged_again(
    station: str, parts: list[np.ndarray], tmp_path: Path
) -> None:
    """Judged whole in the model's grid and in none, a small part has one verdict: another
    --tile judges it again only where it would be cut (it was superseded by the same one)."""
    from typer.testing import CliRunner

    from training.cli import app

    small, large = tmp_path / "small.png", tmp_path / "strip.png"
    small.write_bytes(_png(parts[0]))  # 64 px: one tile of the model's 64 px grid, itself
    large.write_bytes(_png(_mosaic(parts[:6], columns=3, rows=2)))
    runner = CliRunner()
    command = ["inspect", str(small), str(large), "--backend", "pytorch"]
    assert runner.invoke(app, command).exit_code == 0
    whole = runner.invoke(app, [*command, "--tile", "off"])
    assert whole.exit_code == 0, whole.output
    assert "1 part(s) judged earlier" in " ".join(whole.output.split())  # the strip alone
    assert len(_stored_points(station)) == 3
    # In 32 px tiles, the small part is cut too: judged again.
    finer = runner.invoke(app, [*command, "--tile", "32"])
    assert "2 part(s) judged earlier" in " ".join(finer.output.split())
    assert len(_stored_points(station)) == 5


def test_a_part_another_grid_cuts_into_the_same_tiles_is_not_judged_again(
    station: str, parts: list[np.ndarray], tmp_path: Path
) -> None:
    """A 160 x 64 part is cut at x 0, 48 and 96 by the model's 64 px grid without overlap and
    by 64 px at 20% alike: the same tiles, the same verdict. Another overlap judged it again
    for nothing, its verdict superseded by the same one."""
    from typer.testing import CliRunner

    from training.cli import app

    pixels = np.hstack([parts[0], parts[1], parts[2][:, :32]])
    assert tile_grid(160, 64, TileSpec(64, 0.2)) == tile_grid(160, 64, TileSpec(64, 0.0))
    image = tmp_path / "part.png"
    image.write_bytes(_png(pixels))
    runner = CliRunner()
    command = ["inspect", str(image), "--backend", "pytorch"]
    assert runner.invoke(app, command).exit_code == 0
    alike = runner.invoke(app, [*command, "--tile", "64:0.2"])
    assert alike.exit_code == 0, alike.output
    assert "judged earlier" not in alike.output
    assert len(_stored_points(station)) == 1
    # At half a tile's overlap it is cut at x 0, 32, 64 and 96: judged again.
    other = runner.invoke(app, [*command, "--tile", "64:0.5"])
    assert "1 part(s) judged earlier" in " ".join(other.output.split())
    assert len(_stored_points(station)) == 2


def test_batch_takes_tile_and_a_bad_value_is_one_line_before_the_model_loads(
    station: str, parts: list[np.ndarray], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "strip.png").write_bytes(_png(_mosaic(parts[:6], columns=3, rows=2)))
    runner = CliRunner()
    command = ["batch", str(folder), "--line", "L", "--station", "S", "--backend", "pytorch"]
    done = runner.invoke(app, [*command, "--tile", "96:25%"])
    assert done.exit_code == 0, done.output
    assert "judging in 96 px tiles, 25% overlap" in done.output
    assert _stored_points(station)[0]["tile"] == {"size": 96, "overlap": 0.25}
    refused = runner.invoke(app, [*command, "--tile", "96:1.5"])
    assert isinstance(refused.exception, UserError)
    assert str(refused.exception) == "--tile 96:1.5: tile overlap 1.5: from 0 to 0.9"
    assert len(_stored_points(station)) == 1


def test_workers_of_a_parallel_run_are_handed_the_grid(station: str, tmp_path: Path) -> None:
    from inspection.parallel import ParallelInspection

    job = ParallelInspection(station, tmp_path / "store", "L", "S", 2, tile=TileSpec(96, 0.0))
    try:
        assert [pickle.loads(pickle.dumps(j)).tile for j in job._jobs] == [TileSpec(96, 0.0)] * 2
    finally:
        job.close()


def test_the_inspect_page_judges_in_the_models_grid_and_says_so(
    tiled_weights: Path, parts: list[np.ndarray]
) -> None:
    from sqlalchemy import select
    from streamlit.testing.v1 import AppTest

    from db.models import Inspection, ModelVersion
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated, register_production_detector

    url = get_settings().resolved_database_url
    migrated(url)
    register_production_detector(url, tiled_weights, get_settings().models_dir)
    with session_scope(url) as session:
        session.scalars(select(ModelVersion)).one().thresholds = LOW
    large = _mosaic(parts[:6], columns=3, rows=2)
    at = AppTest.from_file(
        str(Path(__file__).parents[1] / "dashboard" / "app.py"), default_timeout=120
    ).run()
    at.file_uploader(key="inspect_files").set_value([("strip.png", _png(large), "image/png")])
    at.run()
    assert not at.exception, at.exception
    assert any(
        "Parts larger than 64 px were judged tile by tile (64 px tiles, 0% overlap)" in c.value
        for c in at.caption
    )
    expected = _inspect(Inspector.from_weights(tiled_weights, LOW), large)
    with session_scope(url) as session:
        stored = session.scalars(select(Inspection)).one().predictions
        boxes = sorted((p.class_name, p.x1, p.y1, p.x2, p.y2) for p in stored)
    wanted = sorted((d.class_name, d.x1, d.y1, d.x2, d.y2) for d in expected)
    assert wanted and [b[0] for b in boxes] == [w[0] for w in wanted]
    assert [x for b in boxes for x in b[1:]] == pytest.approx(
        [x for w in wanted for x in w[1:]], abs=0.05
    )


def test_a_tiled_run_fills_its_batches_with_tiles_not_parts(
    tiled_weights: Path, parts: list[np.ndarray]
) -> None:
    """Batches of `batch_size` parts held every large part decoded whole until the batch was
    judged (64 frames of 20 MP, a batch ahead: gigabytes), and their thousands of tiles kept
    the first part's verdict waiting for the last. A tiled run judges one part first, then as
    many as fill one batch with their tiles."""
    large = _png(_mosaic(parts[:6], columns=3, rows=2))  # six tiles each
    inspector = Inspector.from_weights(tiled_weights, LOW, backend="pytorch", batch_size=4)
    formed: list[int] = []
    finish = inspector._finish

    def recording(prepared, side_by_side=False):  # type: ignore[no-untyped-def]
        formed.append(len(prepared))
        return finish(prepared, side_by_side)

    inspector._finish = recording  # type: ignore[method-assign]
    try:
        assert inspector.parts_per_batch() == 1
        results = list(inspector.inspect(PartInput(f"p{i}.png", large) for i in range(5)))
    finally:
        inspector.close()
    assert [r.name for r in results] == [f"p{i}.png" for i in range(5)]
    assert all(r.verdict != "error" for r in results)
    assert formed == [1] * 5  # six tiles a part: one part fills a batch of four tiles
    assert inspector.parts_per_batch() == 1
    small = Inspector.from_weights(tiled_weights, LOW, backend="pytorch", batch_size=4)
    try:
        list(small.inspect([PartInput("small.png", _png(parts[0]))]))
        assert small.parts_per_batch() == 4  # parts of one tile: a batch of parts
        # A line that mixes sizes: a large part later keeps batches small from then on (the
        # last batch alone made a small part's batch a whole batch of large ones).
        list(small.inspect([PartInput("large.png", large)]))
        list(small.inspect([PartInput("small2.png", _png(parts[1]))]))
        assert small.parts_per_batch() == 1
    finally:
        small.close()
    untiled = Inspector.from_weights(tiled_weights, LOW, backend="pytorch", tile="off")
    assert untiled.parts_per_batch() == untiled.batch_size
    untiled.close()


def test_the_inspect_page_shows_a_large_parts_boxes_at_its_own_resolution(
    tiled_weights: Path, parts: list[np.ndarray]
) -> None:
    """A strip wider than the page is drawn shrunk, its few-pixel defects dots: its most
    confident boxes are also shown close up, at the part's own resolution."""
    from sqlalchemy import select
    from streamlit.testing.v1 import AppTest

    from dashboard.charts import SHOWN_SIDE
    from db.models import ModelVersion
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated, register_production_detector

    url = get_settings().resolved_database_url
    migrated(url)
    register_production_detector(url, tiled_weights, get_settings().models_dir)
    with session_scope(url) as session:
        session.scalars(select(ModelVersion)).one().thresholds = LOW
    strip = np.hstack([parts[i % len(parts)] for i in range(SHOWN_SIDE // 64 + 2)])
    app = AppTest.from_file(
        str(Path(__file__).parents[1] / "dashboard" / "app.py"), default_timeout=120
    ).run()
    app.file_uploader(key="inspect_files").set_value([("strip.png", _png(strip), "image/png")])
    app.run()
    assert not app.exception, app.exception
    images = app.get("image")
    assert 2 <= len(images) <= 1 + 6  # the strip, then up to six of its boxes close up
    assert all(c.startswith(tuple(CLASSES)) for i in images[1:] for c in i.captions)


def _export_without_grid(weights: Path) -> Path:
    """The export beside `weights`, its grid taken out of the metadata, as an export written
    before the grid went into it."""
    import onnx

    from training.export import export_detector

    exported = export_detector(weights)
    model = onnx.load(str(exported))
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(exported))
    return exported


def test_an_export_without_the_grid_of_its_tiled_weights_is_refused(
    station: str, tiled_weights: Path, parts: list[np.ndarray], tmp_path: Path
) -> None:
    """A CPU station runs the .onnx beside the weights: one exported before the grid was in its
    metadata judged every large part whole, shrunk, and said nothing."""
    from typer.testing import CliRunner

    from inspection.engine import open_backend
    from training.cli import app

    registered = next((tmp_path / "models").glob("*/tiled.pt"))  # (as registered)
    exported = _export_without_grid(registered)
    with pytest.raises(UserError, match="export it again") as raised:
        open_backend(registered, "auto", "cpu")
    assert str(raised.value).startswith(
        f"{exported.name} judges every part whole, but the weights it was exported from, "
        f"{registered}, judge in 64 px tiles, 0% overlap"
    )
    image = tmp_path / "strip.png"
    image.write_bytes(_png(_mosaic(parts[:6], columns=3, rows=2)))
    runner = CliRunner()
    for command in (
        ["inspect", str(image), "--backend", "onnx"],
        ["inspect", str(image), "--model", str(exported)],
    ):
        refused = runner.invoke(app, command)
        assert isinstance(refused.exception, UserError), refused.output
        assert "export it again" in str(refused.exception)
    assert _stored_points(station) == []  # nothing judged whole under the tiled version
    # The weights themselves still judge, and an export carrying the grid is taken.
    assert open_backend(registered, "pytorch", "cpu").tile == TileSpec(64, 0.0)
    from training.export import export_detector

    export_detector(registered)
    assert open_backend(registered, "auto", "cpu").tile == TileSpec(64, 0.0)


def test_weights_replaced_by_a_file_of_the_same_size_and_time_are_read_again(
    tmp_path: Path,
) -> None:
    """The grid a checkpoint carries is read once per file; weights copied over with their
    time kept (`rsync -a`, `cp -p`), of the same size, served the old file's grid."""
    import os

    import torch

    from inspection.engine import checkpoint_tile

    path, other = tmp_path / "weights.pt", tmp_path / "renewed.pt"  # (names of one length)
    torch.save({CHECKPOINT_KEY: TileSpec(256, 0.2).to_json()}, path)
    torch.save({CHECKPOINT_KEY: TileSpec(300, 0.2).to_json()}, other)
    assert path.stat().st_size == other.stat().st_size
    assert checkpoint_tile(path) == TileSpec(256, 0.2)
    before = path.stat()
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert checkpoint_tile(path) == TileSpec(300, 0.2)


def test_a_lone_tiled_parts_tiles_run_side_by_side_on_a_cpus_streams(
    tiled_weights: Path, parts: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part judged on its own takes the latency path: its six tiles, batches of one on an ONNX
    CPU station, ran one after another on the session of every core, while the streams that
    queued parts' batches run on stood idle. They run side by side, with the same detections."""
    import shutil

    from inspection.backends.onnx_backend import OnnxBackend
    from training.export import export_detector

    exported = export_detector(Path(shutil.copy2(tiled_weights, tmp_path / "tiled.pt")))
    large = _png(_mosaic(parts[:6], columns=3, rows=2))  # six 64 px tiles
    thresholds = Thresholds.from_dict(LOW, OnnxBackend(exported).class_names)
    alone = Inspector(OnnxBackend(exported, cpu_streams=1), thresholds)
    try:
        expected = alone.inspect_one("strip.png", large).detections
    finally:
        alone.close()
    backend = OnnxBackend(exported, cpu_streams=2)
    if backend.streams < 2:
        pytest.skip("one core: nothing runs side by side")
    assert backend.tile == TileSpec(64, 0.0)
    calls: list[str] = []
    wide, narrow = backend.infer, backend.infer_side_by_side
    monkeypatch.setattr(backend, "infer", lambda b: calls.append("wide") or wide(b))
    monkeypatch.setattr(
        backend, "infer_side_by_side", lambda b: calls.append("narrow") or narrow(b)
    )
    inspector = Inspector(backend, thresholds)
    try:
        assert inspector.batch_size == 1
        found = inspector.inspect_one("strip.png", large).detections
    finally:
        inspector.close()
    assert calls == ["narrow"] * 6
    assert [d.class_name for d in found] == [d.class_name for d in expected]
    for a, b in zip(found, expected, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
        assert _box(a) == pytest.approx(_box(b), abs=0.05)


def test_a_part_refused_for_its_size_is_judged_once_the_limit_is_raised(
    station: str, parts: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised as its refusal said (DEFECTS_MAX_MEGAPIXELS), the same file was still refused:
    its stored refusal, naming the old limit, was served as the part's verdict."""
    from typer.testing import CliRunner

    from inspection.settings import get_settings
    from training.cli import app

    image = tmp_path / "strip.png"  # 1280 x 1024: 1.3 MP, a grid of the 64 px parts
    image.write_bytes(_png(np.tile(_mosaic(parts[:4], columns=2, rows=2), (8, 10))))
    runner = CliRunner()
    command = ["inspect", str(image), "--backend", "pytorch", "--json"]
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "1")
    get_settings.cache_clear()
    refused = runner.invoke(app, command)
    assert json.loads(refused.stdout)[0]["error"].startswith("image too large: 1280x1024")
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "2")
    get_settings.cache_clear()
    judged = runner.invoke(app, command)
    assert json.loads(judged.stdout)[0]["verdict"] in {"pass", "fail"}, judged.output
    again = runner.invoke(app, command)  # (judged now: not judged again at the same limit)
    assert "judged earlier" not in again.output
    assert len(_stored_points(station)) == 2


def test_a_refusal_for_size_is_judged_again_by_the_limit_it_recorded_not_by_its_words(
    station: str, parts: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which refused parts to judge again at a new pixel limit was read from the refusal's
    words: a refusal worded otherwise (a later release's message) was served as the verdict
    at every limit. The record keeps the limit itself; at the same limit it is not judged
    again."""
    from sqlalchemy import update
    from typer.testing import CliRunner

    from db.models import Inspection
    from db.session import session_scope
    from inspection.settings import get_settings
    from training.cli import app

    image = tmp_path / "strip.png"  # 1280 x 1024: 1.3 MP
    image.write_bytes(_png(np.tile(_mosaic(parts[:4], columns=2, rows=2), (8, 10))))
    runner = CliRunner()
    command = ["inspect", str(image), "--backend", "pytorch", "--json"]
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "1")
    get_settings.cache_clear()
    assert json.loads(runner.invoke(app, command).stdout)[0]["verdict"] == "error"
    with session_scope(station) as session:
        session.execute(update(Inspection).values(error="pixels past what is allowed"))
    assert json.loads(runner.invoke(app, command).stdout)[0]["verdict"] == "error"
    assert len(_stored_points(station)) == 1  # (the same limit: not judged again)
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "2")
    get_settings.cache_clear()
    judged = runner.invoke(app, command)
    assert json.loads(judged.stdout)[0]["verdict"] in {"pass", "fail"}, judged.output
    assert len(_stored_points(station)) == 2


def test_a_line_scan_strip_over_64_mp_is_judged_where_the_limit_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line-scan strip (here 12000 x 6000, 72 MP) was refused "over the 64 MP limit" with
    nothing a plant could change; Pillow's own limit (about 89 MP) must not refuse it first."""
    from inspection.images import ImageDecodeError, decode_image
    from inspection.settings import SettingsError, get_settings

    strip = Image.new("1", (12000, 6000))  # (one bit a pixel: a small PNG)
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match=r"over the 64 MP limit \(DEFECTS_MAX_MEGAPIXELS\)"):
        decode_image(buffer.getvalue())
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "100")
    get_settings.cache_clear()
    assert decode_image(buffer.getvalue()).width == 12000
    larger = io.BytesIO()
    Image.new("1", (15000, 12000)).save(larger, format="PNG")  # 180 MP: over twice Pillow's
    with pytest.raises(ImageDecodeError, match="over the 100 MP limit"):
        decode_image(larger.getvalue())
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "0")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match="DEFECTS_MAX_MEGAPIXELS='0'"):
        get_settings()


def test_a_training_lets_its_library_read_images_as_large_as_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DEFECTS_MAX_MEGAPIXELS raised over Pillow's limit, an image the import took was
    dropped from training as corrupt by the training library's own check with Pillow."""
    from ultralytics.data.utils import check_image

    from inspection.settings import get_settings
    from tests.conftest import migrated
    from training.train_detector import TrainRequest, train_detector

    big = tmp_path / "big.png"
    Image.new("1", (20000, 10000)).save(big)  # 200 MP: over twice Pillow's 89 MP
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # (Pillow's own)
    with pytest.raises(Exception, match="decompression bomb"):
        check_image(str(big))
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "300")
    get_settings.cache_clear()
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrated(url)
    with pytest.raises(UserError):  # (no such dataset: stopped before any training)
        train_detector(TrainRequest(data="none-such"), url=url)
    check_image(str(big))  # read, as the import read it


def test_status_and_the_live_page_show_the_grid_a_station_judges_in(
    station: str, parts: list[np.ndarray], tmp_path: Path
) -> None:
    """A station given --tile (or --tile off, a tiled model's strips shrunk whole) showed on
    the floor only its model, as if it judged in the model's own grid."""
    import csv

    from streamlit.testing.v1 import AppTest
    from typer.testing import CliRunner

    from dashboard.downloads import filtered_results_csv
    from db.queries import Filters
    from inspection.settings import get_settings
    from training.cli import app

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "strip.png").write_bytes(_png(_mosaic(parts[:6], columns=3, rows=2)))
    runner = CliRunner()
    command = ["batch", str(folder), "--line", "L", "--station", "S", "--backend", "pytorch"]
    grids = []
    for tile in (["--tile", "96:25%"], ["--tile", "off"], []):
        assert runner.invoke(app, [*command, *tile]).exit_code == 0
        shown = runner.invoke(app, ["status", "--json"])
        assert shown.exit_code == 0, shown.output
        grids.append({s["station"]: s["grid"] for s in json.loads(shown.stdout)["stations"]}["S"])
    assert grids == ["96 px tiles, 25% overlap (--tile)", "whole (--tile off)", "model's own"]
    at = AppTest.from_file(
        str(Path(__file__).parents[1] / "dashboard" / "app.py"), default_timeout=120
    ).run()
    at.switch_page("views/live.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table[table["station"] == "S"]["grid"]) == ["model's own"]
    assert "grid:" in " ".join(c.value for c in at.caption)
    # The History page's download says each verdict's grid (every run's, superseded ones too).
    csv_text = filtered_results_csv(get_settings().resolved_database_url, Filters()).decode()
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert sorted(r["grid"] for r in rows) == sorted(grids)


def test_a_part_a_model_fires_all_over_keeps_its_most_confident_boxes_and_every_failed_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every counted box of a tiled part was kept: tens of thousands where a model fires all
    over a large frame, each a row to write and to read. At most MAX_COUNTED now, the most
    confident, each failed class keeping its own most confident few, and how many went said."""
    from inspection import engine

    monkeypatch.setattr(engine, "MAX_COUNTED", 10)
    monkeypatch.setattr(engine, "MIN_COUNTED_PER_CLASS", 3)
    sure = [Detection("spot", 0.9 - i / 100, i, 0, i + 1, 1, counted=True) for i in range(20)]
    rare = [Detection("scratch", 0.3 - i / 100, i, 5, i + 1, 6, counted=True) for i in range(5)]
    faint = [Detection("spot", 0.1, i, 9, i + 1, 10, counted=False) for i in range(4)]
    found = sure[:12] + rare + sure[12:] + faint  # (as a merge gives them: falling confidence)
    kept, left_out = engine.bound_counted(found)
    assert kept == sure[:10] + rare[:3] + faint
    assert left_out == 12
    assert engine.bound_counted(sure[:10] + faint) == (sure[:10] + faint, 0)


class _FiresAllOver(Backend):
    """A network that finds a lattice of small boxes in every 64 px tile, none at a tile's
    edge (so none is fused): scratches, then fainter spots, each a little less confident than
    the one before; at the lattice's end, a spot below the threshold."""

    name = "fires-all-over"
    device = "test"
    model_path = Path("fires-all-over.pt")  # (weights, as a station's backend names its file)
    image_size = 64
    class_names = CLASSES
    tile = TileSpec(64, 0.0)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        centres = [(x, y) for y in range(8, 57, 8) for x in range(8, 57, 8)]  # 49, 4 px apart
        raw = np.zeros((len(batch), 4 + len(CLASSES), len(centres)), dtype=np.float32)
        for k, (x, y) in enumerate(centres):
            raw[:, :4, k] = (x, y, 4, 4)
            raw[:, 4 + (0 if k < 30 else 1), k] = 0.9 - k / 100
        raw[:, 4:, -1] = (0, 0.1)
        return raw


def test_a_station_bounds_a_tiled_parts_boxes_and_records_how_many_went(
    parts: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspection import engine

    large = _mosaic(parts[:6], columns=3, rows=2)  # six tiles of 49 boxes
    inspector = Inspector(_FiresAllOver())
    try:
        unbounded = inspector.inspect_one("part.png", _png(large))
        monkeypatch.setattr(engine, "MAX_COUNTED", 100)
        monkeypatch.setattr(engine, "MIN_COUNTED_PER_CLASS", 20)
        bounded = inspector.inspect_one("part.png", _png(large))
        alone = inspector.inspect_one("one.png", _png(parts[0]))  # no larger than a tile
    finally:
        inspector.close()
    counted = [d for d in unbounded.detections if d.counted]
    assert len(counted) == 6 * 48 and unbounded.boxes_left_out == 0
    assert bounded.verdict == unbounded.verdict == "fail"
    assert bounded.failed_classes == unbounded.failed_classes == ["scratch", "spot"]
    kept = [d for d in bounded.detections if d.counted]
    assert kept[:100] == counted[:100] and len(kept) == 120  # (the spots' 20 beside them)
    assert bounded.boxes_left_out == 6 * 48 - 120
    assert [d for d in bounded.detections if not d.counted] == [
        d for d in unbounded.detections if not d.counted
    ]
    assert alone.boxes_left_out == 0  # (judged whole, every box kept)


def test_a_tiles_own_bound_keeps_its_counted_classes_and_adds_what_it_left_out(
    parts: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tile kept its MAX_DETECTIONS most confident boxes before the merge: a tile's
    spots, all counted, went behind its scratches, the spots' class went from the part's failed
    classes, and the count of boxes left out was the merge's alone. Now a tile keeps what a
    part keeps, and the boxes its own bound left out are added to the part's count."""
    from inspection import engine

    monkeypatch.setattr(engine, "MAX_DETECTIONS", 20)
    monkeypatch.setattr(engine, "MAX_COUNTED", 40)
    monkeypatch.setattr(engine, "MIN_COUNTED_PER_CLASS", 5)
    inspector = Inspector(_FiresAllOver())  # (30 scratches and 18 spots counted a tile)
    try:
        judged = inspector.inspect_one("part.png", _png(_mosaic(parts[:6], columns=3, rows=2)))
    finally:
        inspector.close()
    assert judged.failed_classes == ["scratch", "spot"]
    kept = [d for d in judged.detections if d.counted]
    assert [d.class_name for d in kept].count("spot") == 5 and len(kept) == 45
    # (Each tile left out 8 of its 48; the merge's bound 195 of the 240 the tiles kept.)
    assert judged.boxes_left_out == 6 * 48 - 45


def test_how_many_boxes_went_is_in_the_record_inspect_the_feed_and_the_csv(
    station: str, parts: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    from typer.testing import CliRunner

    from dashboard.downloads import filtered_results_csv
    from db.queries import Filters
    from inspection import engine
    from inspection.batch import BatchInspection, read_file
    from inspection.results import result_line
    from training.cli import app

    monkeypatch.setattr(engine, "MAX_COUNTED", 100)
    monkeypatch.setattr(engine, "MIN_COUNTED_PER_CLASS", 20)
    strip, small = tmp_path / "strip.png", tmp_path / "small.png"
    strip.write_bytes(_png(_mosaic(parts[:6], columns=3, rows=2)))
    small.write_bytes(_png(parts[0]))
    inspector = Inspector(_FiresAllOver())
    job = BatchInspection(station, tmp_path / "store", "L", "S", inspector=inspector)
    results: list = []  # type: ignore[type-arg]
    job.run([read_file(strip, str(strip)), read_file(small, str(small))], results.append)
    inspector.close()
    lines = {r.name: result_line(r, "L", "S", job.run_id, seq) for seq, r in enumerate(results, 1)}
    assert lines[str(strip)]["boxes_left_out"] == 6 * 48 - 120
    assert lines[str(small)]["boxes_left_out"] == 0
    # What was recorded, as `defects inspect` reads it back (judged already: not judged again).
    runner = CliRunner()
    shown = runner.invoke(app, ["inspect", str(strip), "--backend", "pytorch"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.rstrip().endswith(f", {6 * 48 - 120} more boxes not kept")
    as_json = runner.invoke(
        app, ["inspect", str(strip), str(small), "--backend", "pytorch", "--json"]
    )
    assert [r["boxes_left_out"] for r in json.loads(as_json.stdout)] == [6 * 48 - 120, 0]
    rows = list(csv.reader(io.StringIO(filtered_results_csv(station, Filters()).decode())))
    assert rows[0][12:14] == ["grid", "boxes_left_out"]
    assert sorted(r[13] for r in rows[1:]) == ["0", str(6 * 48 - 120)]

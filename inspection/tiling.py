"""Tiles of a large part image: one grid shared by the dataset import and the stations.

A camera frame much larger than the detector's input (a line-scan strip, a 20 MP frame) shrunk
whole to the model's size loses a defect of a few pixels. A tiled model is trained on tiles cut
from the labeled images at their own resolution, and a station cuts each part by the same grid,
judges every tile and merges the detections back into the part's pixels. The grid is one
function so that a part's tiles at a station are the tiles its labels were cut into, and a
part's verdict (any counted detection on any tile) is the one evaluation and calibration count.

Written here rather than taken from SAHI: SAHI would add a dependency for one grid function
and one NMS call, and its slicing rounds tile positions its own way, which the import and the
stations would then both have to follow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from inspection.verdict import Detection

# Where a tiled model carries its grid: a key of its PyTorch checkpoint, and a metadata entry of
# its ONNX export (beside the classes and image size).
CHECKPOINT_KEY = "defects_tile"
ONNX_METADATA_KEY = "defects.tile"
MAX_OVERLAP = 0.9  # beyond it the tiles nearly repeat each other and the work grows as 1/(1-o)^2
MIN_TILE = 32  # a tile smaller than the detector's coarsest stride finds nothing


def station_grid(tile: dict[str, Any] | str | None, judged: bool = True) -> str:
    """A station's grid in words, from the "tile" of its verdicts' operating point (None: the
    model's own): what the Live page and `defects status` show beside the model."""
    if not judged:
        return ""
    if tile is None:
        return "model's own"
    if tile == "off":
        return "whole (--tile off)"
    spec = TileSpec.from_json(tile)
    return f"{spec.describe()} (--tile)" if spec is not None else "model's own"


class TileSpecError(ValueError):
    """A tile size or overlap that cannot be used; the message says why."""


@dataclass(frozen=True)
class TileSpec:
    """Square tiles of `size` pixels of the original image, neighbours sharing at least
    `overlap` of a tile's width, so that a defect smaller than the shared band lies whole in
    one tile."""

    size: int
    overlap: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < MIN_TILE:
            raise TileSpecError(f"tile size {self.size!r}: at least {MIN_TILE} pixels")
        if not (0.0 <= self.overlap <= MAX_OVERLAP) or math.isnan(self.overlap):
            raise TileSpecError(f"tile overlap {self.overlap!r}: from 0 to {MAX_OVERLAP}")

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "overlap": self.overlap}

    @classmethod
    def from_json(cls, value: Any) -> TileSpec | None:
        """A spec from a checkpoint's or metadata's value; None for an untiled model."""
        if value in (None, "", {}):
            return None
        try:
            # (json.loads inside: a value that is not JSON, "640:0.2" written by hand into a
            # data.yaml, is as unreadable as one without a size.)
            if isinstance(value, str):
                value = json.loads(value)
            return cls(int(value["size"]), float(value.get("overlap", 0.2)))
        except (KeyError, TypeError, ValueError) as exc:
            raise TileSpecError(f"unreadable tile setting {value!r}: {exc}") from exc

    def describe(self) -> str:
        return f"{self.size} px tiles, {self.overlap:.0%} overlap"

    def option(self) -> str:
        """The grid as `--tile` takes it (SIZE:OVERLAP): what a message tells a user to give."""
        return f"{self.size}:{self.overlap:g}"

    @classmethod
    def parse(cls, text: str) -> TileSpec:
        """SIZE[:OVERLAP], the overlap a fraction (0.2) or a percentage (20%), 0.2 when left
        out: one spelling for the import that cuts a dataset and the stations that judge."""
        size_text, _, overlap_text = text.strip().partition(":")
        try:
            size = int(size_text)
            overlap = 0.2
            if overlap_text.endswith("%"):
                overlap = float(overlap_text[:-1]) / 100
            elif overlap_text:
                overlap = float(overlap_text)
        except ValueError as exc:
            raise TileSpecError(
                "give SIZE[:OVERLAP] in pixels and a fraction or percentage (256, 256:0.2, 256:20%)"
            ) from exc
        return cls(size, overlap)


def _starts(length: int, size: int, overlap: float) -> list[int]:
    """Tile starts along one axis: evenly spread from 0 to `length - size`, as few as keep each
    neighbour's shared band at least `overlap` of a tile (the last tile ends at the edge, not
    past it: a tile padded with grey the model never saw whole in training)."""
    if length <= size:
        return [0]
    stride = max(1, math.floor(size * (1.0 - overlap)))
    count = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def judged_in(tile: TileSpec | None) -> str:
    """How a grid judges a large part, in words: "in 64 px tiles, ..." or "every part whole"."""
    return f"in {tile.describe()}" if tile is not None else "every part whole"


def tile_option(tile: TileSpec | None) -> str:
    """The `--tile` value that judges in `tile` (None: off)."""
    return tile.option() if tile is not None else "off"


def tile_grid(width: int, height: int, spec: TileSpec) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of each tile, row by row. An image no larger than a tile is one tile,
    itself; a side shorter than a tile is not padded (the model letterboxes it, as in training)."""
    xs = _starts(width, spec.size, spec.overlap)
    ys = _starts(height, spec.size, spec.overlap)
    return [(x, y, min(x + spec.size, width), min(y + spec.size, height)) for y in ys for x in xs]


def needs_tiling(width: int, height: int, spec: TileSpec | None) -> bool:
    return spec is not None and (width > spec.size or height > spec.size)


def judged_tiles(
    width: int, height: int, spec: TileSpec | None
) -> tuple[tuple[int, int, int, int], ...] | None:
    """The tiles a part of this size is judged in under `spec`, None where it is judged whole.
    Two grids that give a part the same tiles give it the same verdict (another overlap can
    cut a part exactly as the model's own does), so this, not the spec, says whether a part
    stamped in one grid must be judged again in another."""
    if not needs_tiling(width, height, spec):
        return None
    assert spec is not None
    return tuple(tile_grid(width, height, spec))


def tile_of_checkpoint(ckpt: Any) -> TileSpec | None:
    """The grid a PyTorch checkpoint was trained on, or None (an untiled model)."""
    if not isinstance(ckpt, dict):
        return None
    return TileSpec.from_json(ckpt.get(CHECKPOINT_KEY))


def tile_of_metadata(meta: dict[str, str]) -> TileSpec | None:
    """The grid recorded in an ONNX export's metadata, or None."""
    return TileSpec.from_json(meta.get(ONNX_METADATA_KEY))


# How near a box must come to a tile's edge to be cut by it, and to another box to meet it: a
# fraction of the tile's side, at least a pixel (a detector's box of a cut object ends at the
# tile's edge, or a little short of it).
EDGE_TOLERANCE = 0.01

# The share of a cut piece's part in the neighbouring tile that a box found there must cover to
# be the same defect, seen whole there.
HELD_SHARE = 0.5

Box = tuple[int, int, int, int]

# Of each edge (left, top, right, bottom), the one facing it across a cut: right, bottom,
# left, top.
FACING = [2, 3, 0, 1]


def _area(boxes: np.ndarray) -> np.ndarray:
    """Areas of x1, y1, x2, y2 boxes in the last axis; 0 where empty."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(
        boxes[..., 3] - boxes[..., 1], 0, None
    )


def fuse_cut_boxes(per_tile: Sequence[Sequence[Detection]], grid: Sequence[Box]) -> list[Detection]:
    """`fused_with_origins`'s boxes alone."""
    return fused_with_origins(per_tile, grid)[0]


def fused_with_origins(
    per_tile: Sequence[Sequence[Detection]], grid: Sequence[Box]
) -> tuple[list[Detection], list[int]]:
    """One box for a defect a tile edge cut in pieces. A defect wider than the band two tiles share
    lies whole in neither: each tile finds a part of it, and the parts overlap too little for
    NMS to take them for one, so the part showed two boxes (and the review queue two lines) for
    one defect; a clipped part more confident than a neighbour's whole box even won NMS over it,
    and the box shown was smaller than the defect. Boxes of one class from two neighbouring
    tiles that overlap or meet, where one of them is cut by an edge of its tile that the other's
    tile reaches past (an inner edge, not the part's) and the other is cut too, by its tile's
    edge facing the one that cut the first, or covers at least HELD_SHARE of the piece's part in
    its tile, and both counted or both not, become one: their union, at the higher confidence.
    Fused transitively, so a scratch across a strip of tiles is one box; boxes far apart, or
    that only a tile's part-edge clips, are left as they are. `per_tile[i]` holds tile
    `grid[i]`'s detections in the part's pixels; the result keeps their order, a fused box where
    its first piece was. With each box, the tile it came from, or -1 for a box fused of pieces
    of several: the merge that follows knows that two boxes of one tile went through that tile's
    own NMS already."""
    flat = [d for found in per_tile for d in found]
    tile_of = np.repeat(np.arange(len(per_tile)), [len(found) for found in per_tile])
    if not flat or len(grid) < 2:
        return list(flat), tile_of.tolist()
    boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in flat], dtype=np.float64)
    index = {name: k for k, name in enumerate(sorted({d.class_name for d in flat}))}
    classes = np.array([index[d.class_name] for d in flat])
    counted = np.array([d.counted for d in flat])
    tiles = np.array(grid, dtype=np.float64)
    width, height = tiles[:, 2].max(), tiles[:, 3].max()
    tolerance = np.maximum(1.0, EDGE_TOLERANCE * (tiles[:, 2:] - tiles[:, :2]).max(axis=1))
    own, slack = tiles[tile_of], tolerance[tile_of][:, None]
    # Edges (left, top, right, bottom) of its tile that cut each box: inner ones only.
    inner = np.stack([own[:, 0] > 0, own[:, 1] > 0, own[:, 2] < width, own[:, 3] < height], axis=1)
    near = np.concatenate(
        [boxes[:, :2] <= own[:, :2] + slack, boxes[:, 2:] >= own[:, 2:] - slack], axis=1
    )
    cut = inner & near
    parent = list(range(len(flat)))
    joined: set[int] = set()  # the boxes some union took in (the rest stand alone, as found)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    members = [np.flatnonzero(tile_of == t) for t in range(len(grid))]
    grown = tiles + tolerance[:, None] * np.array([-1.0, -1.0, 1.0, 1.0])
    for a in range(len(grid)):
        if not cut[members[a]].any():
            continue
        # Its neighbours: the tiles that share a band (or, without overlap, an edge) with it.
        neighbours = np.flatnonzero(
            (grown[:, 0] <= grown[a, 2])
            & (grown[a, 0] <= grown[:, 2])
            & (grown[:, 1] <= grown[a, 3])
            & (grown[a, 1] <= grown[:, 3])
        )
        for b in neighbours.tolist():
            if b == a or not members[b].size:
                continue
            # The edges of tile a that tile b reaches past: a piece cut there goes on in b.
            past = np.array(
                [
                    tiles[b, 0] < tiles[a, 0],
                    tiles[b, 1] < tiles[a, 1],
                    tiles[b, 2] > tiles[a, 2],
                    tiles[b, 3] > tiles[a, 3],
                ]
            )
            pieces = members[a][(cut[members[a]] & past).any(axis=1)]
            if not pieces.size:
                continue
            # (The edges of a that cut each piece and that b reaches past.)
            piece_edges = cut[pieces] & past
            others = members[b]
            pa, po = boxes[pieces][:, None, :], boxes[others][None, :, :]
            gap = np.maximum(tolerance[a], tolerance[b])
            # A box of b is the rest of a piece where it is cut too, by the edge of b facing
            # the edge of a that cut the piece (the defect went on into a across the same
            # line), or where it holds most of the piece's share of b (b saw the defect whole).
            # Merely meeting the piece is not enough: two defects side by side, one ending
            # where a's tile does, were chained into one box. Nor is a cut across the other
            # axis: of a diagonal neighbour, a box cut by its top edge beside a piece cut by a's
            # right one is another defect (b saw the piece's own rest from b's left edge on).
            reverse = np.array(
                [
                    tiles[a, 0] < tiles[b, 0],
                    tiles[a, 1] < tiles[b, 1],
                    tiles[a, 2] > tiles[b, 2],
                    tiles[a, 3] > tiles[b, 3],
                ]
            )
            facing_edges = (cut[others] & reverse)[:, FACING]
            also_cut = (piece_edges[:, None, :] & facing_edges[None, :, :]).any(axis=-1)
            share = np.clip(
                pa, np.r_[tiles[b, :2], tiles[b, :2]], np.r_[tiles[b, 2:], tiles[b, 2:]]
            )
            share_area = _area(share)
            overlap = _area(
                np.concatenate(
                    [np.maximum(pa[..., :2], po[..., :2]), np.minimum(pa[..., 2:], po[..., 2:])],
                    axis=-1,
                )
            )
            holds_it = (share_area > 0) & (overlap >= HELD_SHARE * share_area)
            meet = (
                (also_cut | holds_it)
                & (classes[pieces][:, None] == classes[others][None, :])
                # (A counted piece is never grown by a faint box below its class's threshold:
                # a model's faint boxes cover much of a part, and chained through them a
                # defect's box spread across the strip.)
                & (counted[pieces][:, None] == counted[others][None, :])
                & (pa[..., 0] <= po[..., 2] + gap)
                & (po[..., 0] <= pa[..., 2] + gap)
                & (pa[..., 1] <= po[..., 3] + gap)
                & (po[..., 1] <= pa[..., 3] + gap)
            )
            for i, j in zip(*np.nonzero(meet), strict=True):
                ri, rj = root(int(pieces[i])), root(int(others[j]))
                joined.update((int(pieces[i]), int(others[j])))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    # A group's root is its first box (a union keeps the smaller root), so the roots in order
    # give the groups in the order of their first boxes.
    groups: dict[int, list[int]] = {}
    for i in sorted(joined):
        groups.setdefault(root(i), []).append(i)
    fused: list[Detection] = []
    origins: list[int] = []
    for first in range(len(flat)):
        if parent[first] != first:
            continue
        group = groups.get(first, [first])
        if len(group) == 1:
            fused.append(flat[first])
            origins.append(int(tile_of[first]))
            continue
        origins.append(-1)  # (a union is no box any tile's NMS saw)
        best = max(group, key=lambda i: (flat[i].confidence, -i))
        span = boxes[group]
        x1, y1 = span[:, :2].min(axis=0).tolist()
        x2, y2 = span[:, 2:].max(axis=0).tolist()
        fused.append(
            replace(
                flat[best],
                x1=x1,
                y1=y1,
                x2=x2,
                y2=y2,
            )
        )
    return fused, origins

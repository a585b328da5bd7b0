"""The tile grid shared by the import and the stations."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspection.tiling import (
    TileSpec,
    TileSpecError,
    needs_tiling,
    tile_grid,
    tile_of_checkpoint,
    tile_of_metadata,
)


def test_an_image_no_larger_than_a_tile_is_one_tile_itself() -> None:
    assert tile_grid(200, 150, TileSpec(256)) == [(0, 0, 200, 150)]
    assert not needs_tiling(256, 256, TileSpec(256))
    assert not needs_tiling(5000, 5000, None)


def test_tiles_cover_the_image_end_at_its_edges_and_share_at_least_the_overlap() -> None:
    spec = TileSpec(100, 0.25)
    tiles = tile_grid(1000, 230, spec)
    xs = sorted({(x0, x1) for x0, _, x1, _ in tiles})
    ys = sorted({(y0, y1) for _, y0, _, y1 in tiles})
    assert xs[0][0] == 0 and xs[-1][1] == 1000 and ys[0][0] == 0 and ys[-1][1] == 230
    assert all(x1 - x0 == 100 for x0, x1 in xs) and all(y1 - y0 == 100 for y0, y1 in ys)
    for (_a0, a1), (b0, _) in zip(xs, xs[1:], strict=False):
        assert a1 - b0 >= 25  # neighbours share a quarter of a tile at least
    for (_a0, a1), (b0, _) in zip(ys, ys[1:], strict=False):
        assert a1 - b0 >= 25
    assert len(tiles) == len(xs) * len(ys)
    # As few as that: one tile fewer along x would leave a band under the overlap.
    assert len(xs) == 13  # ceil((1000 - 100) / 75) + 1


def test_a_strip_narrower_than_a_tile_keeps_its_height() -> None:
    assert tile_grid(500, 40, TileSpec(200, 0.0)) == [
        (0, 0, 200, 40),
        (150, 0, 350, 40),
        (300, 0, 500, 40),
    ]


@pytest.mark.parametrize(
    ("size", "overlap"), [(8, 0.2), (256, -0.1), (256, 0.95), (256, float("nan"))]
)
def test_unusable_specs_are_refused_with_a_reason(size: int, overlap: float) -> None:
    with pytest.raises(TileSpecError, match="tile"):
        TileSpec(size, overlap)


def test_a_spec_travels_in_checkpoints_and_onnx_metadata() -> None:
    spec = TileSpec(320, 0.3)
    assert tile_of_checkpoint({"defects_tile": spec.to_json()}) == spec
    assert tile_of_checkpoint({"model": None}) is None
    assert tile_of_metadata({"defects.tile": '{"size": 320, "overlap": 0.3}'}) == spec
    assert tile_of_metadata({}) is None
    with pytest.raises(TileSpecError, match="unreadable"):
        tile_of_metadata({"defects.tile": '{"overlap": 0.3}'})


@pytest.mark.parametrize("value", ["640:0.2", "{size: 640"])
def test_a_recorded_grid_that_is_not_json_is_named_unreadable(value: str, tmp_path: Path) -> None:
    """A hand-edited data.yaml (`defects_tile: "640:0.2"`, the command line's spelling) raised
    a bare JSON error that named neither the setting nor the file."""
    from inspection.errors import UserError
    from training.datasets import dataset_tile

    with pytest.raises(TileSpecError, match="unreadable tile setting"):
        TileSpec.from_json(value)
    (tmp_path / "data.yaml").write_text(f"defects_tile: {value!r}\n")
    with pytest.raises(UserError, match=r"data\.yaml: unreadable tile setting"):
        dataset_tile(tmp_path)


def test_a_grid_is_said_as_the_option_that_gives_it() -> None:
    from inspection.tiling import judged_in, tile_option

    assert TileSpec.parse(TileSpec(200, 0.25).option()) == TileSpec(200, 0.25)
    assert tile_option(TileSpec(64, 0.0)) == "64:0" and tile_option(None) == "off"
    assert judged_in(TileSpec(64, 0.2)) == "in 64 px tiles, 20% overlap"
    assert judged_in(None) == "every part whole"

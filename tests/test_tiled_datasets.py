"""Tiled datasets: the import cuts labeled parts into tiles by the stations' grid, training
records the grid in the weights and their export, evaluation and calibration count parts."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from db.registry import get_model_version
from db.session import session_scope
from inspection.settings import get_settings
from inspection.tiling import CHECKPOINT_KEY, ONNX_METADATA_KEY, TileSpec, tile_grid
from tests.conftest import Trained, tiny_detector
from tests.synthetic import CLASSES
from tests.test_backtest import reviewed  # noqa: F401 - the fixture of four reviewed parts
from training.datasets import (
    DATA_YAML_TILE_KEY,
    TILE_MAP,
    TileOrigin,
    import_dataset,
    tile_name,
)

TILE = TileSpec(64, 0.2)
# On a 200 x 120 part, 64 px tiles at 20% overlap start at x 0, 45, 91, 136 and y 0, 28, 56.
ACROSS = ("scratch", 100, 5, 120, 15)  # in the tiles at x 45 (its left 9 px) and x 91 (whole)
SLIVER = ("spot", 62.5, 70, 80, 80)  # 1.5 px of it in the tiles at x 0: a sliver there


def _part(folder: Path, name: str, width: int, height: int, boxes: list, seed: int) -> None:
    """A noisy grey part with its boxes painted bright, and its VOC annotation."""
    pixels = np.random.default_rng(seed).normal(128, 12, (height, width)).clip(0, 255)
    for _, x1, y1, x2, y2 in boxes:
        pixels[int(y1) : int(y2), int(x1) : int(x2)] = 240
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(folder / "images" / name)
    if boxes:
        objects = "".join(
            f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2 in boxes
        )
        (folder / "annotations" / f"{Path(name).stem}.xml").write_text(
            f"<annotation><filename>{name}</filename>{objects}</annotation>"
        )


def _splits(folder: Path, splits: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in splits.items():
        (folder / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return folder


def _labels(root: Path, split: str, tile: str) -> list[list[float]]:
    text = (root / "labels" / split / f"{Path(tile).stem}.txt").read_text()
    return [[float(v) for v in line.split()] for line in text.splitlines()]


def test_import_cuts_each_part_into_tiles_with_its_boxes_clipped(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    _part(src, "across.png", 200, 120, [ACROSS, SLIVER], seed=1)
    _part(src, "good.png", 200, 120, [], seed=2)
    _part(src, "small.png", 50, 40, [("spot", 10, 10, 20, 20)], seed=3)
    splits = _splits(
        tmp_path / "splits", {"train": ["across.png"], "val": ["good.png"], "test": ["small.png"]}
    )
    report = import_dataset(
        session, "voc", src, "tiled", tmp_path / "ds", splits, CLASSES, tile=TILE
    )
    root = report.root

    # The grid is the stations' grid, every tile of a part in the part's split.
    files = {
        s: sorted(p.name for p in (root / "images" / s).iterdir()) for s in report.split_counts
    }
    assert files["train"] == sorted(
        tile_name("across", x, y) for x, y, _, _ in tile_grid(200, 120, TILE)
    )
    assert files["val"] == sorted(
        tile_name("good", x, y) for x, y, _, _ in tile_grid(200, 120, TILE)
    )
    assert files["test"] == ["small__x0_y0.png"]  # no larger than a tile: itself, one tile
    assert (root / "images" / "test" / "small__x0_y0.png").read_bytes() == (
        src / "images" / "small.png"
    ).read_bytes()

    # A tile's pixels are the part's, at its own resolution (lossless).
    part = np.asarray(Image.open(src / "images" / "across.png"))
    tile = np.asarray(Image.open(root / "images" / "train" / "across__x45_y28.png"))
    assert np.array_equal(tile, part[28:92, 45:109])

    # A box across a tile's edge is in both tiles, clipped; a sliver of 1.5 px is left out.
    scratch = CLASSES.index("scratch")
    # (In the tile at x 45, its left 9 px: x 55 to 64 of the tile.)
    expected = [scratch, 59.5 / 64, 10 / 64, 9 / 64, 10 / 64]
    assert _labels(root, "train", "across__x45_y0.png") == [pytest.approx(expected, abs=1e-6)]
    assert len(_labels(root, "train", "across__x91_y0.png")) == 1
    assert _labels(root, "train", "across__x0_y28.png") == []  # the spot's sliver only
    assert len(_labels(root, "train", "across__x45_y28.png")) == 1  # the spot whole
    assert [str(i) for i in report.warnings] == [
        "across.png: warning: 2 fragment(s) of a box cut by a tile's edge, under 2 px across "
        "the cut, left unlabeled in that tile (the box is labeled in the tiles that hold the "
        "rest of it)"
    ]
    assert all(not _labels(root, "val", name) for name in files["val"])  # a good part's tiles

    # The grid in data.yaml, the tile map, and the counts of parts and tiles.
    data = yaml.safe_load((root / "data.yaml").read_text())
    assert data[DATA_YAML_TILE_KEY] == {"size": 64, "overlap": 0.2}
    with (root / TILE_MAP).open() as handle:
        rows = {row["tile"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {n for names in files.values() for n in names}
    assert rows["across__x136_y56.png"] == {
        "tile": "across__x136_y56.png",
        "split": "train",
        "part": "across.png",
        "x0": "136",
        "y0": "56",
        "x1": "200",
        "y1": "120",
        "part_defective": "1",  # the part's, though this tile holds no box
        "original_name": "",  # (an export of reviews': here `part` is the source's own file)
    }
    assert rows["good__x0_y0.png"]["part_defective"] == "0"
    # The scratch in the tiles at (45, 0) and (91, 0), the spot in those at (45, 28), (45, 56).
    assert report.split_counts["train"] == {
        "images": 12,
        "boxes": 4,
        "good": 0,
        "parts": 1,
        "good_tiles": 8,
    }
    assert report.split_counts["val"]["parts"] == 1 and report.split_counts["val"]["good"] == 1
    assert (root / "import_report.txt").read_text().splitlines()[2] == (
        "imported: 3 images (parts) cut into 25 tiles (64 px tiles, 20% overlap) "
        "(0 converted to 8-bit PNG)"
    )


def test_import_without_tile_writes_whole_images_as_before(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    _part(src, "across.png", 200, 120, [ACROSS], seed=1)
    report = import_dataset(session, "voc", src, "whole", tmp_path / "ds", classes=CLASSES)
    assert DATA_YAML_TILE_KEY not in yaml.safe_load((report.root / "data.yaml").read_text())
    assert not (report.root / TILE_MAP).exists()
    assert report.tile is None and report.n_images == 1


def _with_orientation(path: Path, orientation: int) -> None:
    """The image at `path` saved again with the EXIF orientation `orientation`: a JPEG, or a
    PNG whose eXIf chunk follows its pixel data (as the PNG format allows)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.open(path).convert("L")
    if path.suffix != ".png":
        image.save(path, format="JPEG", quality=95, exif=exif.tobytes())
        return
    image.save(path, format="PNG", exif=exif.tobytes())
    data = path.read_bytes()
    start = data.index(b"eXIf") - 4
    end = start + 12 + int.from_bytes(data[start : start + 4], "big")
    chunk, data = data[start:end], data[:start] + data[end:]
    iend = data.index(b"IEND") - 4
    path.write_bytes(data[:iend] + chunk + data[iend:])


@pytest.mark.parametrize("tile", [TILE, None], ids=["tiled", "whole"])
@pytest.mark.parametrize(
    ("orientation", "suffix"), [(2, ".jpg"), (3, ".jpg"), (4, ".jpg"), (6, ".jpg"), (3, ".png")]
)
def test_an_image_the_decoder_turns_by_its_exif_orientation_is_left_out_with_why(
    session,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    orientation: int,
    suffix: str,
    tile: TileSpec | None,
) -> None:
    """A mirrored or upside-down image keeps its size, so it passed the size check, but
    stations (and training) see its pixels turned while its boxes stayed where they were
    labelled; whether they were labelled on the stored or the turned pixels cannot be told."""
    from inspection.images import decode_image

    src = tmp_path / "src"
    _part(src, f"turned{suffix}", 200, 120, [ACROSS], seed=1)
    _part(src, "plain.jpg", 200, 120, [ACROSS], seed=2)
    _with_orientation(src / "images" / f"turned{suffix}", orientation)
    if suffix == ".png":  # (decoded, it is turned all the same)
        decoded = decode_image((src / "images" / "turned.png").read_bytes()).source
        assert np.array_equal(
            decoded, np.asarray(Image.open(src / "images" / "turned.png"))[::-1, ::-1]
        )
    report = import_dataset(
        session, "voc", src, "exif", tmp_path / "ds", classes=CLASSES, tile=tile
    )
    assert report.n_images == 1
    [left_out] = report.left_out
    assert left_out.file == f"turned{suffix}"
    assert f"EXIF orientation {orientation} (" in left_out.reason
    assert "import it again" in left_out.reason


@pytest.mark.parametrize("tile", [TILE, None], ids=["tiled", "whole"])
def test_a_reviewed_part_the_decoder_turns_exports_with_its_boxes_on_the_turned_pixels(
    session,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    tile: TileSpec | None,
) -> None:
    """A part's reviewed boxes are on the pixels stations judged, turned by its EXIF
    orientation: its export is sized and cut as turned (a 90-degree part's boxes were checked
    against its stored size and the part left out)."""
    from inspection.images import decode_image
    from training.datasets import Box, LabeledImage, write_dataset

    stored = np.random.default_rng(3).normal(128, 12, (120, 200)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "part.jpg"
    Image.fromarray(stored).save(path)
    _with_orientation(path, 6)  # turned 90 degrees: 120 x 200 as judged
    turned = decode_image(path.read_bytes()).source
    assert turned.shape[:2] == (200, 120)
    good = tmp_path / "good.png"
    Image.fromarray(stored[:60, :60]).save(good)
    box = Box(CLASSES.index("spot"), 10, 150, 30, 190)  # below the stored image's height
    images = [
        LabeledImage(path, 0, 0, [box], "train", boxes_as_judged=True),
        LabeledImage(good, 0, 0, [], "val", boxes_as_judged=True),
    ]
    report = write_dataset(
        session,
        "turned",
        "reviews",
        "reviews",
        CLASSES,
        images,
        [],
        tmp_path / "ds",
        {"part.jpg": "train", "good.png": "val"},
        tile=tile,
    )
    assert report.left_out == []
    root = report.root
    if tile is None:
        assert _labels(root, "train", "part.jpg") == [
            pytest.approx([box.class_index, 20 / 120, 170 / 200, 20 / 120, 40 / 200], abs=1e-5)
        ]
    else:
        name = tile_name("part", 0, 136)  # the tile at x 0, y 136 holds the box whole
        assert (0, 136, 64, 200) in tile_grid(120, 200, tile)
        pixels = np.asarray(Image.open(root / "images" / "train" / name))
        assert np.array_equal(pixels, turned[136:200, 0:64])
        assert _labels(root, "train", name) == [
            pytest.approx([box.class_index, 20 / 64, 34 / 64, 20 / 64, 40 / 64], abs=1e-5)
        ]


def test_import_command_says_parts_and_tiles_and_refuses_a_bad_grid(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from inspection.errors import UserError
    from training.cli import app

    src = tmp_path / "src"
    _part(src, "across.png", 200, 120, [ACROSS], seed=1)
    _part(src, "good.png", 200, 120, [], seed=2)
    runner = CliRunner()
    for args, error in (
        (["--tile", "16"], "--tile 16: tile size 16: at least 32 pixels"),
        (["--tile", "64:0.95"], "--tile 64:0.95: tile overlap 0.95: from 0 to 0.9"),
        (["--tile", "64:x"], "--tile 64:x: give SIZE[:OVERLAP] in pixels"),
    ):
        result = runner.invoke(app, ["import", "voc", str(src), "--name", "t", *args])
        # (A UserError: the command's entry point prints it as one `error: ...` line.)
        assert isinstance(result.exception, UserError)
        assert str(result.exception).startswith(error)
    assert not (get_settings().datasets_dir / "t").exists()
    result = runner.invoke(app, ["import", "voc", str(src), "--name", "t", "--tile", "64:25%"])
    assert result.exit_code == 0, result.output
    assert "parts cut into 64 px tiles, 25% overlap" in result.output
    assert "tiles" in result.output and "parts" in result.output


def test_a_part_is_flagged_when_any_of_its_tiles_is() -> None:
    """Two tiles of one defective part, one flagged: the part is not missed; a good part with
    one flagged tile of two is one false call."""
    from training.evaluate import part_outcomes, part_rates

    def origin(part: str, defective: bool) -> TileOrigin:
        return TileOrigin(part, "test", 0, 0, 64, 64, defective)

    origins = {
        "a__x0_y0.png": origin("a.png", True),
        "a__x45_y0.png": origin("a.png", True),
        "b__x0_y0.png": origin("b.png", False),
        "b__x45_y0.png": origin("b.png", False),
        "c__x0_y0.png": origin("c.png", False),
        "c__x45_y0.png": origin("c.png", False),
    }
    images = [Path(name) for name in origins]
    flagged = [False, True, False, False, False, True]
    outcomes = part_outcomes(images, flagged, origins)
    assert outcomes == [(True, True), (False, False), (False, True)]
    rates = part_rates(outcomes)
    assert (rates.n_defective, rates.n_missed, rates.n_good, rates.n_false_calls) == (1, 0, 2, 1)


def _tiled_parts(url: str, base: Path, name: str = "tiled") -> Path:
    """Six 128 x 96 parts (six 64 px tiles each), four defective, imported tiled: train two
    defective and a good one, val one of each, test one defective."""
    src = base / "src"
    boxes = {
        "p0.png": [("scratch", 20, 10, 60, 16)],
        "p1.png": [("spot", 40, 40, 70, 70)],  # across tiles
        "p2.png": [],
        "p3.png": [("scratch", 70, 60, 110, 66)],
        "p4.png": [],
        "p5.png": [("spot", 90, 20, 106, 36)],
    }
    for seed, (part, found) in enumerate(boxes.items()):
        _part(src, part, 128, 96, found, seed)
    splits = _splits(
        base / "splits",
        {"train": ["p0.png", "p1.png", "p2.png"], "val": ["p3.png", "p4.png"], "test": ["p5.png"]},
    )
    with session_scope(url) as session:
        report = import_dataset(
            session, "voc", src, name, get_settings().datasets_dir, splits, CLASSES, tile=TILE
        )
    return report.root


def test_evaluation_and_calibration_count_parts_of_a_tiled_dataset(
    trained: Trained, database_url: str, tmp_path: Path
) -> None:
    """mAP over tiles, miss and false-call rates over parts (the tiny model's detections do not
    matter: the counts of parts do)."""
    from training.calibrate import calibrate, score_parts
    from training.evaluate import evaluate_detector

    root = _tiled_parts(database_url, tmp_path)
    result = evaluate_detector(trained.weights, "tiled", "val", url=database_url)
    assert (result.n_images, result.extra["n_tiles"]) == (2, 12)
    assert (result.rates.n_defective, result.rates.n_good) == (1, 1)
    assert result.extra["tile"] == {"size": 64, "overlap": 0.2}
    assert result.per_class["scratch"]["n_boxes"] >= 1  # the tiles' boxes

    scored = score_parts(root, "val", trained.weights, CLASSES)
    assert [p.defective for p in scored] == [True, False]  # p3, p4: parts, not 12 tiles
    calibration = calibrate([p.scores() for p in scored], CLASSES, 0.5)
    assert (calibration.n_defective, calibration.n_good) == (1, 1)


def test_a_tiled_dataset_is_calibrated_without_a_part_classifier(
    trained: Trained, database_url: str, tmp_path: Path
) -> None:
    from inspection.errors import UserError
    from training.calibrate import score_parts

    root = _tiled_parts(database_url, tmp_path)
    with pytest.raises(UserError, match="tiled dataset is calibrated with the detector alone"):
        score_parts(root, "val", trained.weights, CLASSES, classifier_weights=trained.weights)


def test_default_training_size_is_a_tiles_own() -> None:
    from training.train_detector import DEFAULT_IMGSZ, training_size

    assert training_size(None, TileSpec(96)) == 96
    assert training_size(None, None) == DEFAULT_IMGSZ
    assert training_size(128, TileSpec(96)) == 128  # asked for: as asked


def test_record_tile_writes_and_removes_the_grid(trained: Trained, tmp_path: Path) -> None:
    """Fine-tuned onto whole images, a tiled model's weights lose the grid."""
    from inspection.tiling import tile_of_checkpoint
    from training.train_detector import record_tile

    weights = Path(shutil.copy(trained.weights, tmp_path / "best.pt"))
    record_tile(weights, TileSpec(96, 0.25))
    assert tile_of_checkpoint(torch.load(weights, weights_only=False)) == TileSpec(96, 0.25)
    record_tile(weights, None)
    assert CHECKPOINT_KEY not in torch.load(weights, weights_only=False)


@pytest.fixture(scope="module")
def trained_tiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """A tiny detector trained for one epoch on a tiled dataset, at its default size."""
    with tiny_detector(
        tmp_path_factory.mktemp("tiled-detector"), _tiled_parts, "tiled", batch=6
    ) as result:
        yield result


def test_training_on_tiles_registers_weights_that_carry_the_grid(
    trained_tiled: Trained,
) -> None:
    from inspection.tiling import tile_of_checkpoint

    checkpoint = torch.load(trained_tiled.weights, weights_only=False)
    assert tile_of_checkpoint(checkpoint) == TILE
    assert checkpoint["train_args"]["imgsz"] == 64  # the tile's own size
    with session_scope(trained_tiled.url) as session:
        version = get_model_version(session, trained_tiled.version_name)
        assert version.image_size == 64
        assert version.metrics["tile"] == {"size": 64, "overlap": 0.2}


def test_export_of_a_tiled_model_writes_its_grid(trained_tiled: Trained) -> None:
    from inspection.tiling import tile_of_metadata
    from training.export import export_detector, read_metadata

    onnx_path = export_detector(trained_tiled.weights)
    meta = read_metadata(onnx_path)
    assert ONNX_METADATA_KEY in meta
    assert tile_of_metadata(meta) == TILE


def test_reviews_of_a_tiled_production_model_export_tiled(
    reviewed: str,  # noqa: F811 - the fixture imported above
    trained: Trained,
    tmp_path: Path,
) -> None:
    """Retrained on its reviews, a tiled model stays tiled: the export is cut by its grid."""
    from tests.conftest import register_production_detector
    from training.backtest import export_reviews
    from training.train_detector import record_tile

    weights = Path(shutil.copy(trained.weights, tmp_path / "tiled.pt"))
    record_tile(weights, TileSpec(32, 0.2))
    register_production_detector(reviewed, weights, tmp_path / "models", name="tiled")
    with session_scope(reviewed) as session:
        report = export_reviews(session, "from-reviews", CLASSES, tmp_path / "datasets")
    assert report.tile == TileSpec(32, 0.2) and report.issues == []
    data = yaml.safe_load((report.root / "data.yaml").read_text())
    assert data[DATA_YAML_TILE_KEY] == {"size": 32, "overlap": 0.2}
    with (report.root / TILE_MAP).open() as handle:
        rows = list(csv.DictReader(handle))
    split_of_part: dict[str, set[str]] = {}
    for row in rows:
        split_of_part.setdefault(row["part"], set()).add(row["split"])
    assert len(split_of_part) == 4 and all(len(s) == 1 for s in split_of_part.values())
    assert len(rows) == 4 * 9  # 64 px parts, 32 px tiles at 20% overlap: 3 x 3 each
    assert (report.n_images, report.n_tiles) == (4, 36)  # (the Review page says parts)


def test_a_training_started_from_the_models_page_takes_the_datasets_own_size() -> None:
    """The page gave --imgsz 256 always: a tiled dataset's tiles were trained grown or shrunk
    to 256, losing the resolution tiling keeps. Its 0 now leaves the size to the command."""
    from training.jobs import detector_training_command

    command = detector_training_command("tiled", 5, None)
    assert "--imgsz" not in command and command[-4:] == ["--data", "tiled", "--epochs", "5"]
    assert detector_training_command("tiled", 5, 320)[-2:] == ["--imgsz", "320"]


def test_a_tiled_model_on_whole_images_is_evaluated_as_stations_judge_them(
    trained: Trained, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiled model's part figures on a dataset of whole images (imported without --tile)
    were those of each image shrunk whole by ultralytics, which no station does (calibrate
    judged them in tiles): they are now the engine's, the image cut by the model's grid."""
    from inspection.engine import Inspector
    from inspection.images import Tiled
    from tests.synthetic import make_images
    from training.evaluate import evaluate_detector
    from training.train_detector import record_tile

    made = make_images(tmp_path / "made", n=8)
    defective = [m for m in made if m.boxes][:6]
    pixels = [np.asarray(Image.open(tmp_path / "made" / m.name).convert("L")) for m in defective]
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    Image.fromarray(np.hstack(pixels)).save(src / "images" / "strip.png")  # 384 x 64
    objects = "".join(
        f"<object><name>{c}</name><bndbox><xmin>{x1 + 64 * i}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2 + 64 * i}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for i, m in enumerate(defective)
        for c, x1, y1, x2, y2 in m.boxes
    )
    (src / "annotations" / "strip.xml").write_text(
        f"<annotation><filename>strip.png</filename>{objects}</annotation>"
    )
    splits = _splits(tmp_path / "splits", {"train": [], "val": [], "test": ["strip.png"]})
    with session_scope(database_url) as session:
        import_dataset(session, "voc", src, "strips", get_settings().datasets_dir, splits, CLASSES)
    tiled = Path(shutil.copy(trained.weights, tmp_path / "tiled.pt"))
    record_tile(tiled, TileSpec(64, 0.0))

    # The engine's own tiling, watched (it runs as it does at a station).
    judged_in: list[int] = []
    detect_in_tiles = Inspector._detect_in_tiles

    def watched(self: Inspector, good: list, side_by_side: bool) -> dict:  # type: ignore[type-arg]
        judged_in.extend(len(p.image.grid) for p in good if isinstance(p.image, Tiled))
        return detect_in_tiles(self, good, side_by_side)

    monkeypatch.setattr(Inspector, "_detect_in_tiles", watched)
    result = evaluate_detector(
        tiled, "strips", "test", {"default": 0.001, "iou": 0.45}, url=database_url
    )
    assert judged_in == [6]  # the strip, in the six 64 px tiles a station cuts it into
    assert (result.rates.n_defective, result.rates.n_missed) == (1, 0)
    assert result.extra["part_figures_in_tiles"] == {"size": 64, "overlap": 0.0}


def test_a_part_classifier_is_not_trained_or_evaluated_on_tiles(
    trained: Trained, database_url: str, tmp_path: Path
) -> None:
    """Trained on a tiled dataset, the part classifier learned tiles while stations give it
    whole parts; refused before a job is recorded, with the way out."""
    from sqlalchemy import select

    from db.models import TrainingJob
    from inspection.errors import UserError
    from training.evaluate import evaluate_classifier
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    _tiled_parts(database_url, tmp_path)
    request = ClassifierTrainRequest(data="tiled", epochs=1, imgsz=64, batch=2, device="cpu")
    with pytest.raises(UserError, match="imported without --tile") as raised:
        train_classifier(request, url=database_url)
    assert "'tiled' is cut into 64 px tiles, 20% overlap" in str(raised.value)
    with session_scope(database_url) as session:
        assert not session.scalars(select(TrainingJob)).all()
    with pytest.raises(UserError, match="evaluate it on a dataset imported without --tile"):
        evaluate_classifier(trained.weights, "tiled", "val", url=database_url)


def test_a_tiled_models_part_figures_on_whole_images_are_the_engines_in_its_grid(
    database_url: str, tmp_path: Path
) -> None:
    """A station cuts a part larger than a tile into the model's tiles (and calibrate scores it
    so); evaluate shrank it whole to the model's size, and its part figures were of verdicts
    no station gives. (The shipped demo detector, given a grid: its confidences follow what it
    sees, where a one-epoch model's are one prior everywhere.)"""
    from inspection.engine import Inspector, PartInput, TileChoice
    from training.datasets import import_dataset, split_image_paths
    from training.demo import DEMO_DIR
    from training.evaluate import evaluate_detector, part_rates
    from training.train_detector import record_tile

    classes = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    src = tmp_path / "src"
    boxes = {
        "w0.png": [("patches", 20, 10, 90, 60)],
        "w1.png": [("scratches", 200, 40, 210, 200)],
        "w2.png": [],
        "w3.png": [("patches", 150, 100, 260, 180)],
        "w4.png": [],
        "w5.png": [("inclusion", 300, 20, 316, 36)],
        "w6.png": [],
    }
    for seed, (part, found) in enumerate(boxes.items()):
        _part(src, part, 384, 256, found, seed)
    names = list(boxes)
    splits = _splits(
        tmp_path / "splits", {"train": names[:1], "val": names[6:], "test": names[1:6]}
    )
    with session_scope(database_url) as session:
        root = import_dataset(
            session, "voc", src, "whole", get_settings().datasets_dir, splits, classes
        ).root
    weights = Path(shutil.copy(DEMO_DIR / "weights.pt", tmp_path / "tiled.pt"))
    record_tile(weights, TileSpec(128, 0.2))
    images = split_image_paths(root, "test")
    defective = [bool(boxes[p.name]) for p in images]

    def best(tile: TileChoice) -> list[float]:
        """Each part's most confident detection, judged by the engine in `tile`."""
        inspector = Inspector.from_weights(
            weights, {"default": 0.001, "iou": 0.45}, backend="pytorch", tile=tile
        )
        try:
            results = inspector.inspect(PartInput(p.name, p.read_bytes()) for p in images)
            return [max((d.confidence for d in r.detections), default=0.0) for r in results]
        finally:
            inspector.close()

    tiled, whole = best("model"), best("off")

    def rates(scores: list[float], threshold: float) -> tuple[int, int]:
        counted = part_rates(list(zip(defective, [s >= threshold for s in scores], strict=True)))
        return counted.n_missed, counted.n_false_calls

    # A threshold at which parts judged in tiles and parts judged whole are counted apart.
    candidates = sorted({*tiled, *whole})
    threshold = next(
        t
        for t in ((a + b) / 2 for a, b in zip(candidates, candidates[1:], strict=False))
        if rates(tiled, t) != rates(whole, t)
    )
    result = evaluate_detector(
        weights, "whole", "test", {"default": threshold, "iou": 0.45}, url=database_url
    )
    assert (result.rates.n_missed, result.rates.n_false_calls) == rates(tiled, threshold)
    assert (result.rates.n_defective, result.rates.n_good) == (3, 2)
    assert result.extra["part_figures_in_tiles"] == {"size": 128, "overlap": 0.2}


def test_calibration_on_tiles_of_another_grid_judges_each_tile_whole(
    database_url: str, tmp_path: Path
) -> None:
    """A model of 64 px tiles calibrated on a dataset cut into 128 px tiles: evaluate judged
    each tile image whole (as a station run with --tile of the dataset's grid does, which the
    grid warning says), while calibrate cut every tile again into the model's 64 px tiles,
    scoring verdicts no station gives. (The shipped demo detector, given a grid.)"""
    from inspection.engine import Inspector, PartInput
    from training.calibrate import SCORE_FLOOR, score_parts
    from training.datasets import group_by_part, split_image_paths, tile_origins
    from training.demo import DEMO_DIR
    from training.train_detector import record_tile

    classes = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    src = tmp_path / "src"
    boxes = {
        "t0.png": [("patches", 20, 10, 90, 60)],
        "v0.png": [],
        "v1.png": [("scratches", 150, 20, 160, 120)],
        "e0.png": [],
    }
    for seed, (part, found) in enumerate(boxes.items()):
        _part(src, part, 256, 128, found, seed)
    splits = _splits(
        tmp_path / "splits", {"train": ["t0.png"], "val": ["v0.png", "v1.png"], "test": ["e0.png"]}
    )
    with session_scope(database_url) as session:
        root = import_dataset(
            session,
            "voc",
            src,
            "coarse",
            get_settings().datasets_dir,
            splits,
            classes,
            tile=TileSpec(128, 0.0),
        ).root
    weights = Path(shutil.copy(DEMO_DIR / "weights.pt", tmp_path / "fine.pt"))
    record_tile(weights, TileSpec(64, 0.0))
    images = split_image_paths(root, "val")
    inspector = Inspector.from_weights(
        weights, {"default": SCORE_FLOOR, "iou": 0.45}, backend="pytorch", tile="off"
    )
    try:
        per_tile = [
            sorted(d.confidence for d in r.detections if d.counted)
            for r in inspector.inspect(PartInput(p.name, p.read_bytes()) for p in images)
        ]
    finally:
        inspector.close()
    expected = [
        sorted(c for i in indices for c in per_tile[i])
        for _, _, indices in group_by_part(images, tile_origins(root) or {})
    ]
    assert any(expected)
    scored = score_parts(root, "val", weights, classes)
    assert [sorted(d.confidence for d in p.detections) for p in scored] == [
        pytest.approx(e, abs=1e-4) for e in expected
    ]


def test_figures_on_tiles_of_another_grid_than_the_models_say_so(
    trained: Trained, database_url: str, tmp_path: Path
) -> None:
    """An untiled model (or one of another grid) evaluated or calibrated on a tiled dataset
    was scored tile image by tile image, as no station of it judges, and nothing said so."""
    from tests.conftest import register_production_detector
    from training.calibrate import calibrate_model
    from training.evaluate import evaluate_detector
    from training.train_detector import record_tile

    _tiled_parts(database_url, tmp_path)
    result = evaluate_detector(trained.weights, "tiled", "val", url=database_url)
    warning = result.extra["grid_warning"]
    assert "'tiled' is cut into 64 px tiles, 20% overlap" in warning
    assert "stations judge every part whole" in warning and "--tile 64:0.2" in warning
    register_production_detector(database_url, trained.weights, get_settings().models_dir)
    stored = calibrate_model(database_url, "tiny", "tiled", "val", 0.5, store=False)
    assert stored.operating_point["calibration"]["grid_warning"] == warning
    # The model's own grid: nothing to say.
    tiled = Path(shutil.copy(trained.weights, tmp_path / "tiled.pt"))
    record_tile(tiled, TILE)
    assert "grid_warning" not in evaluate_detector(tiled, "tiled", "val", url=database_url).extra


def test_reviews_of_parts_stations_judged_in_tiles_say_so_and_export_in_their_grid(
    reviewed: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An untiled production model at stations run with --tile (line-scan strips): the export
    was cut whole, without a word, and a model retrained on it learnt the strips shrunk. It
    now says which grid the stations judged in, and --tile cuts the export by it."""
    from typer.testing import CliRunner

    from db.models import Inspection
    from inspection.errors import UserError
    from training.backtest import export_reviews
    from training.cli import app

    with session_scope(reviewed) as session:
        for inspection in session.query(Inspection).all():  # as a station with --tile 32:0.2
            inspection.thresholds = {**inspection.thresholds, "tile": TileSpec(32, 0.2).to_json()}
    with session_scope(reviewed) as session:
        whole = export_reviews(session, "whole", CLASSES, tmp_path / "datasets")
    assert whole.tile is None
    said = [str(i) for i in whole.issues if "stations" in str(i)]
    assert len(said) == 1 and "in 32 px tiles, 20% overlap" in said[0]
    assert "--tile 32:0.2" in said[0] and "4 of the 4 reviewed parts" in said[0]
    with session_scope(reviewed) as session:
        tiled = export_reviews(
            session, "tiled", CLASSES, tmp_path / "datasets", tile=TileSpec(32, 0.2)
        )
    assert tiled.tile == TileSpec(32, 0.2) and tiled.n_tiles == 36
    assert not any("stations" in str(i) for i in tiled.issues)

    monkeypatch.setenv("DEFECTS_DATABASE_URL", reviewed)
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    runner = CliRunner()
    bad = runner.invoke(app, ["export-reviews", "--name", "x", "--tile", "big"])
    assert isinstance(bad.exception, UserError)  # (main prints it as one `error:` line)
    assert str(bad.exception).startswith("--tile big: give SIZE[:OVERLAP]")
    cut = runner.invoke(app, ["export-reviews", "--name", "cli", "--tile", "32:20%"])
    assert cut.exit_code == 0, cut.output
    data = yaml.safe_load((tmp_path / "data" / "datasets" / "cli" / "data.yaml").read_text())
    assert data[DATA_YAML_TILE_KEY] == {"size": 32, "overlap": 0.2}

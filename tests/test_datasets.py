from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from db.models import Dataset
from inspection.errors import UserError
from tests.synthetic import CLASSES, write_coco, write_splits, write_voc, write_yolo
from training.datasets import import_dataset, write_dataset


def _label_lines(root: Path) -> dict[str, list[str]]:
    return {p.stem: p.read_text().splitlines() for p in (root / "labels").rglob("*.txt")}


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco"])
def test_import_each_format_keeps_good_parts(session, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    writer = {"voc": write_voc, "yolo": write_yolo, "coco": write_coco}[fmt]
    images = writer(tmp_path / "src", n=12)
    report = import_dataset(
        session, fmt, tmp_path / "src", f"synth-{fmt}", tmp_path / "datasets", classes=CLASSES
    )
    assert report.issues == []
    assert report.n_images == 12
    assert sum(c["good"] for c in report.split_counts.values()) == 3  # every 4th image
    labels = _label_lines(report.root)
    assert len(labels) == 12
    first_defect = next(im for im in images if im.boxes)
    c, x1, y1, x2, y2 = first_defect.boxes[0]
    cls, cx, cy, w, h = labels[Path(first_defect.name).stem][0].split()
    assert int(cls) == CLASSES.index(c)
    assert float(cx) == pytest.approx((x1 + x2) / 2 / 64, abs=1e-5)
    assert float(w) == pytest.approx((x2 - x1) / 64, abs=1e-5)
    assert labels[Path(images[0].name).stem] == []  # a good part: empty label file
    data = yaml.safe_load((report.root / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASSES))
    stored = session.query(Dataset).filter_by(name=f"synth-{fmt}").one()
    assert stored.classes == CLASSES


def test_fixed_splits_are_respected(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = write_voc(tmp_path / "src", n=12)
    splits = write_splits(tmp_path / "splits", images)
    report = import_dataset(session, "voc", tmp_path / "src", "s", tmp_path / "ds", splits, CLASSES)
    assert {k: v["images"] for k, v in report.split_counts.items()} == {
        "train": 8,
        "val": 2,
        "test": 2,
    }
    assert (report.root / "splits" / "val.txt").read_text().split() == [
        images[1].name,
        images[7].name,
    ]


def test_bad_annotations_are_reported_with_file_and_reason(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    write_voc(src, n=8)
    ann = src / "annotations"
    (ann / "part_001.xml").write_text(
        (ann / "part_001.xml").read_text().replace("<xmax>", "<xmax>9")
    )
    (ann / "part_002.xml").write_text((ann / "part_002.xml").read_text().replace("scratch", "dent"))
    (ann / "part_003.xml").write_text("<annotation><object>")
    (src / "images" / "part_005.png").write_bytes(b"not an image")
    report = import_dataset(session, "voc", src, "bad", tmp_path / "ds", classes=CLASSES)
    reasons = {issue.file: issue.reason for issue in report.issues}
    assert "outside the 64x64 image" in reasons["part_001.png"]
    assert reasons["part_002.xml"] == "unknown class dent"
    assert reasons["part_003.xml"].startswith("unreadable annotation")
    assert reasons["part_005.png"].startswith("unreadable image")
    assert report.n_images == 4  # 8 minus the four reported
    assert not list(report.root.rglob("part_003.png"))
    assert "part_001.png" in (report.root / "import_report.txt").read_text()


def test_existing_name_and_missing_source_are_user_errors(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_voc(tmp_path / "src", n=4)
    import_dataset(session, "voc", tmp_path / "src", "once", tmp_path / "ds", classes=CLASSES)
    with pytest.raises(UserError, match="already exists"):
        import_dataset(session, "voc", tmp_path / "src", "once", tmp_path / "ds", classes=CLASSES)
    with pytest.raises(UserError, match="source not found"):
        import_dataset(session, "voc", tmp_path / "nope", "x", tmp_path / "ds")


@pytest.mark.parametrize("name", ["..", ".", "", "../evil", "a/b", ".hidden", "x" * 101])
def test_a_name_that_is_not_one_plain_folder_is_refused_and_nothing_is_touched(
    session, tmp_path: Path, name: str
) -> None:  # type: ignore[no-untyped-def]
    """A dataset's name becomes its folder, which an import replaces: ".." once named the data
    folder itself, and importing under it deleted the database, images and models."""
    write_voc(tmp_path / "src", n=2)
    store = tmp_path / "data" / "datasets"
    store.mkdir(parents=True)
    keep = tmp_path / "data" / "defects.db"
    keep.write_bytes(b"the database")
    with pytest.raises(UserError, match="dataset name"):
        import_dataset(session, "voc", tmp_path / "src", name, store, classes=CLASSES)
    with pytest.raises(UserError, match="dataset name"):
        write_dataset(session, name, "src", "voc", CLASSES, [], [], store)
    assert keep.read_bytes() == b"the database" and list(store.iterdir()) == []

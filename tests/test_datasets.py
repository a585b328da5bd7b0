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


def test_coco_images_with_unreadable_annotations_are_left_out_not_made_good(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Imported without their boxes, they would be good parts whose defects are background."""
    import json

    write_coco(tmp_path / "src", n=8)
    path = tmp_path / "src" / "annotations.json"
    coco = json.loads(path.read_text())
    by_image = {a["image_id"]: a for a in coco["annotations"]}
    ids = [image["id"] for image in coco["images"] if image["id"] in by_image][:3]
    by_image[ids[0]]["bbox"] = [1, 2, "x"]
    del by_image[ids[1]]["bbox"]
    coco["annotations"].append({**by_image[ids[2]], "id": 999, "image_id": 12345})
    coco["annotations"].append(7)
    path.write_text(json.dumps(coco))
    report = import_dataset(session, "coco", tmp_path / "src", "c", tmp_path / "ds")
    reasons = [issue.reason for issue in report.issues]
    assert sum("annotation" in r and "missing 'bbox'" in r for r in reasons) == 1
    assert any("could not convert" in r or "values" in r for r in reasons)
    assert any("annotations of image 12345, which is not listed" in r for r in reasons)
    assert any("not an object" in r for r in reasons)
    assert report.n_images == 8 - 2
    # The categories without a name: one line, not a KeyError.
    for category in coco["categories"]:
        del category["name"]
    path.write_text(json.dumps(coco))
    with pytest.raises(UserError, match="unreadable COCO categories"):
        import_dataset(session, "coco", tmp_path / "src", "d", tmp_path / "ds")


def test_replacing_a_dataset_from_its_own_folder_keeps_its_images(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The old folder once went before the new one was written: importing it again from
    itself found nothing left, and the dataset was gone."""
    write_yolo(tmp_path / "src", n=6)
    first = import_dataset(session, "yolo", tmp_path / "src", "y", tmp_path / "ds", classes=CLASSES)
    again = import_dataset(
        session, "yolo", first.root, "y", tmp_path / "ds", classes=CLASSES, replace=True
    )
    assert again.n_images == first.n_images == 6 and again.issues == []
    assert len(list((tmp_path / "ds" / "y" / "images").rglob("*.png"))) == 6
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["y"]  # nothing left beside


def test_a_dataset_without_train_or_val_images_is_refused_before_training() -> None:
    """Split lists that name none of the images imported fine, and training then failed
    inside ultralytics with a traceback."""
    from db.models import Dataset
    from training.datasets import check_trainable

    counts = {"train": {"images": 0}, "val": {"images": 4}, "test": {"images": 4}}
    with pytest.raises(UserError, match=r"no train images to train on \(train 0, val 4, test 4\)"):
        check_trainable(Dataset(name="calibration-only", split_counts=counts))
    with pytest.raises(UserError, match="no labeled defect in its train split"):
        check_trainable(Dataset(name="good-only", split_counts={**counts, "train": {"images": 8}}))
    check_trainable(
        Dataset(name="fine", split_counts={**counts, "train": {"images": 8, "boxes": 3}})
    )


def test_voc_images_of_one_name_and_an_image_in_two_splits_are_said(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    images = write_voc(tmp_path / "src", n=6)
    folder = tmp_path / "src" / "images"
    (folder / "sub").mkdir()
    shutil.copy(folder / images[0].name, folder / "sub" / images[0].name)
    report = import_dataset(session, "voc", tmp_path / "src", "v", tmp_path / "ds", classes=CLASSES)
    [issue] = report.issues
    assert issue.file == f"sub/{images[0].name}" and "which is used instead" in issue.reason
    splits = write_splits(tmp_path / "splits", images)
    with (splits / "test.txt").open("a") as handle:
        handle.write(images[0].name + "\n")  # train's first image, in test as well
    with pytest.raises(UserError, match=f"{images[0].name} is listed in both train.txt and test"):
        import_dataset(
            session, "voc", tmp_path / "src", "w", tmp_path / "ds", tmp_path / "splits", CLASSES
        )

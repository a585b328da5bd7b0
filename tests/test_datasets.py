from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from db.models import Dataset
from inspection.errors import UserError
from tests.conftest import within
from tests.synthetic import (
    CLASSES,
    SyntheticImage,
    make_images,
    write_coco,
    write_deeppcb,
    write_splits,
    write_voc,
    write_yolo,
)
from training.datasets import (
    SPLITS,
    Box,
    LabeledImage,
    fill_splits,
    import_dataset,
    split_image_paths,
    write_dataset,
)


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
    # A named pipe: COCO's import said "[Errno 20] Not a directory", the others that it had no
    # annotations; each says what it is now, and none opens it (a read waits for a writer).
    os.mkfifo(tmp_path / "ann.json")
    for source_format in ("voc", "yolo", "coco", "deeppcb"):
        with pytest.raises(UserError) as raised:
            import_dataset(session, source_format, tmp_path / "ann.json", "x", tmp_path / "ds")
        assert (
            str(raised.value) == f"{tmp_path / 'ann.json'} is not a folder or a file: a named pipe"
        )


@pytest.mark.parametrize("source_format", ["voc", "yolo", "deeppcb"])
def test_a_file_given_for_a_folder_format_is_said_to_be_a_file(
    session, tmp_path: Path, source_format: str
) -> None:  # type: ignore[no-untyped-def]
    """A regular file given to voc, yolo or deeppcb was said to have no annotations folder, no
    data.yaml or no boards, as if it were a folder missing them."""
    given = tmp_path / "labels.zip"
    given.write_bytes(b"PK")
    with pytest.raises(UserError) as raised:
        import_dataset(session, source_format, given, "x", tmp_path / "ds", classes=CLASSES)
    assert str(raised.value).startswith(f"{given} is a file, not a folder: ")
    assert not (tmp_path / "ds").exists()


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
    session.commit()  # (the old data is removed once the new row is committed)
    assert again.n_images == first.n_images == 6 and again.issues == []
    assert len(list((tmp_path / "ds" / "y" / "images").rglob("*.png"))) == 6
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["y"]  # nothing left beside


def test_an_import_a_full_disk_stops_registers_nothing_and_leaves_no_half_copy(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A disk that filled part way stopped an import with the system's bare "[Errno 28]" and
    left its half-written copy beside the datasets, holding the space. It now says in one line
    that nothing is registered and the dataset is as it was, and removes the half copy; the
    same import then runs whole. (The full disk is simulated: the third image's copy raises
    ENOSPC.)"""
    import errno

    import training.datasets as datasets

    write_yolo(tmp_path / "src", n=6)
    first = import_dataset(session, "yolo", tmp_path / "src", "y", tmp_path / "ds", classes=CLASSES)
    session.commit()  # (as the command does: its lock on y let go)
    place, placed = datasets._place, [0]

    def filling(source: Path, target: Path) -> None:
        placed[0] += 1
        if placed[0] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(source), None, str(target))
        place(source, target)

    monkeypatch.setattr(datasets, "_place", filling)
    with pytest.raises(UserError) as stopped:
        import_dataset(
            session, "yolo", tmp_path / "src", "y", tmp_path / "ds", classes=CLASSES, replace=True
        )
    said = str(stopped.value)
    assert said.startswith("dataset y not written: No space left on device (")
    assert "nothing is registered and dataset y is as it was" in said
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["y"]  # (no half copy beside)
    assert len(list(first.root.glob("images/*/*.png"))) == 6
    with pytest.raises(UserError, match="nothing is registered"):
        import_dataset(session, "yolo", tmp_path / "src", "z", tmp_path / "ds", classes=CLASSES)
    assert session.query(Dataset).filter_by(name="z").first() is None
    monkeypatch.setattr(datasets, "_place", place)  # (space freed)
    assert (
        import_dataset(
            session, "yolo", tmp_path / "src", "z", tmp_path / "ds", classes=CLASSES
        ).n_images
        == 6
    )


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (28, "free space there, or make"),
        (5, "check its disk, or make"),
        (13, "): make"),
        (30, "): the file system is mounted read-only: remount it read-write, or set DEFECTS"),
    ],
)
def test_an_import_stopped_by_the_disk_says_what_to_do_about_that_error(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, advice: str
) -> None:  # type: ignore[no-untyped-def]
    """Any failure to write was said to be a disk "full or read-only" to free: a disk failing
    its writes (EIO) says to check the disk now, where freeing space would not help. A file
    system mounted read-only (EROFS) was told to "make that folder writable", which no
    permission change does: it is told to remount it."""
    import training.datasets as datasets

    write_yolo(tmp_path / "src", n=4)

    def failing(source: Path, target: Path) -> None:
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(datasets, "_place", failing)
    with pytest.raises(UserError) as stopped:
        import_dataset(session, "yolo", tmp_path / "src", "y", tmp_path / "ds", classes=CLASSES)
    said = str(stopped.value)
    assert advice in said and "DEFECTS_DATA_DIR" in said
    assert ("free space" in said) == (code == 28)
    assert ("writable" in said) == (code != 30)


@pytest.mark.parametrize("failing", ["_sync_names", "_sync_tree"])
@pytest.mark.parametrize("trained_on", [False, True])
def test_an_import_failing_after_its_folders_moved_puts_them_back(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, trained_on: bool
) -> None:  # type: ignore[no-untyped-def]
    """A failure after the import's folder took its name (a sync failing, EIO), or after the
    replaced data was moved aside for the model versions trained on it, said "nothing is
    registered and dataset y is as it was" while the new data was under y and the old one in
    .y.replaced, or in a y-before-... folder its rolled-back row did not name. Each folder is
    put back: y holds the old data, and the same import then runs whole."""
    import errno

    import training.datasets as datasets
    from db.models import ModelKind, ModelVersion

    write_yolo(tmp_path / "old", n=6)
    write_yolo(tmp_path / "new", n=4, seed=1)
    datasets_dir = tmp_path / "ds"
    first = import_dataset(session, "yolo", tmp_path / "old", "y", datasets_dir, classes=CLASSES)
    if trained_on:
        version = ModelVersion(
            name="v1", kind=ModelKind.DETECTOR, architecture="yolo", file_path="v1.pt"
        )
        version.sha256 = "0" * 64
        version.dataset_id = session.query(Dataset).filter_by(name="y").one().id
        session.add(version)
    session.commit()
    old_yaml = (first.root / "data.yaml").read_text()

    def eio(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(datasets, failing, eio)
    with pytest.raises(UserError) as stopped:
        import_dataset(
            session, "yolo", tmp_path / "new", "y", datasets_dir, classes=CLASSES, replace=True
        )
    session.rollback()  # (as `defects import` does on an error)
    assert "nothing is registered and dataset y is as it was" in str(stopped.value)
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]
    assert len(list(first.root.glob("images/*/*.png"))) == 6
    assert (first.root / "data.yaml").read_text() == old_yaml
    row = session.query(Dataset).filter_by(name="y").one()
    assert Path(row.root_path) == first.root.resolve() and session.query(Dataset).count() == 1
    monkeypatch.undo()
    again = import_dataset(
        session, "yolo", tmp_path / "new", "y", datasets_dir, classes=CLASSES, replace=True
    )
    assert again.n_images == 4 and len(list(first.root.glob("images/*/*.png"))) == 4


def _spying_on_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each path os.fsync syncs (from any thread), as it was named then, in order."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    synced: list[str] = []
    fsync = os.fsync

    def spying(fd: int) -> None:
        fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", spying)
    return synced


@pytest.mark.parametrize("replace", [False, True])
def test_an_imported_dataset_is_on_disk_before_it_is_registered(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:  # type: ignore[no-untyped-def]
    """An import renamed its folder into place unsynced and committed the dataset's row: after
    a power cut the dataset could be registered with its images, labels or data.yaml empty or
    gone. Each file is synced before the folder takes its name, the store's entry after."""
    write_yolo(tmp_path / "src", n=4)
    datasets_dir = tmp_path / "ds"
    if replace:
        import_dataset(session, "yolo", tmp_path / "src", "y", datasets_dir, classes=CLASSES)
    synced = _spying_on_syncs(monkeypatch)
    report = import_dataset(
        session, "yolo", tmp_path / "src", "y", datasets_dir, classes=CLASSES, replace=replace
    )
    (stage_name,) = {Path(p).name for p in synced if Path(p).name.startswith(".y.importing-")}
    stage = (datasets_dir / stage_name).resolve()
    files = {str(stage / p.relative_to(report.root)) for p in report.root.rglob("*") if p.is_file()}
    assert len(files) > 8 and files <= set(synced)
    folders = {
        str(stage / p.relative_to(report.root)) for p in report.root.rglob("*") if p.is_dir()
    }
    assert folders | {str(stage)} <= set(synced)
    renamed_after = synced.index(str(stage)) + 1
    assert str(datasets_dir.resolve()) in synced[renamed_after:]
    assert str(tmp_path.resolve()) in synced[renamed_after:]


def test_a_moved_datasets_data_yaml_is_rewritten_whole_and_synced(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Found in a moved data folder, a dataset's data.yaml is made to name its new place: the
    rewrite was not synced (a power cut could leave it empty), and a full disk left its partial
    file beside it. It is synced now, and a failed write leaves the old file alone."""
    import errno

    from training.datasets import located_dataset

    write_yolo(tmp_path / "src", n=4)
    report = import_dataset(session, "yolo", tmp_path / "src", "y", tmp_path / "a", classes=CLASSES)
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "y"
    before = (moved / "data.yaml").read_text()
    write_text = Path.write_text

    def full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError) as raised:  # (it was a bare OSError: a traceback from train)
        located_dataset(str(report.root), tmp_path / "b")
    said = str(raised.value)
    assert f"folder is now {moved}" in said and f"make {moved / 'data.yaml'} writable" in said
    assert "No space left on device; free space there, or make" in said
    assert sorted(p.name for p in moved.iterdir() if p.is_file()) == [
        "data.yaml",
        "import_report.txt",
    ]
    assert (moved / "data.yaml").read_text() == before
    monkeypatch.setattr(Path, "write_text", write_text)
    synced = _spying_on_syncs(monkeypatch)
    assert located_dataset(str(report.root), tmp_path / "b") == moved
    assert yaml.safe_load((moved / "data.yaml").read_text())["path"] == str(moved.resolve())
    assert any(".data.yaml." in path for path in synced)
    assert str(moved.resolve()) in synced


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (28, "free space there, or make"),
        (
            30,
            "the file system is mounted read-only: remount it read-write, or set "
            "DEFECTS_DATA_DIR to a copy of the data folder in a writable place, then run",
        ),
    ],
)
def test_a_replace_stopped_by_a_moved_datasets_data_yaml_leaves_no_copy(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, advice: str
) -> None:  # type: ignore[no-untyped-def]
    """A moved dataset's data.yaml that cannot be rewritten stops a --replace in one line once
    the new copy is written: the copy is removed, as on any other failure. On a file system
    mounted read-only (EROFS) it was told to "make data.yaml writable", which no permission
    change does."""

    import training.datasets as datasets
    from db.models import ModelKind, ModelVersion

    write_yolo(tmp_path / "src", n=4)
    import_dataset(session, "yolo", tmp_path / "src", "y", tmp_path / "a", classes=CLASSES)
    version = ModelVersion(name="v1", kind=ModelKind.DETECTOR, architecture="yolo")
    version.file_path, version.sha256 = "v1.pt", "0" * 64
    version.dataset_id = session.query(Dataset).filter_by(name="y").one().id
    session.add(version)
    session.commit()  # (as the command does: its lock on y let go)
    shutil.move(tmp_path / "a", tmp_path / "b")

    def failing(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(datasets, "_rewrite_yaml", failing)
    with pytest.raises(UserError, match="data.yaml cannot be made to name it") as stopped:
        import_dataset(
            session, "yolo", tmp_path / "src", "y", tmp_path / "b", classes=CLASSES, replace=True
        )
    said = str(stopped.value)
    assert advice in said
    assert ("writable, then" in said) == (code != 30)
    session.rollback()  # (as the command does: its lock on y let go)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["y"]


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


def _yolo_lines(image: SyntheticImage) -> list[str]:
    """The label lines an import writes for a synthetic image's boxes."""
    return [
        f"{CLASSES.index(c)} {(x1 + x2) / 2 / image.size:.6f} {(y1 + y2) / 2 / image.size:.6f} "
        f"{(x2 - x1) / image.size:.6f} {(y2 - y1) / image.size:.6f}"
        for c, x1, y1, x2, y2 in image.boxes
    ]


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco"])
def test_two_images_of_one_stem_do_not_share_a_label_file(
    session, tmp_path: Path, fmt: str
) -> None:  # type: ignore[no-untyped-def]
    """Labels are written as <stem>.txt, and ultralytics finds an image's label by its stem:
    part_001.png and part_001.jpg shared one, and a good part was trained as defective."""
    writer = {"voc": write_voc, "yolo": write_yolo, "coco": write_coco}[fmt]
    src = tmp_path / "src"
    images = writer(src, n=8)
    folder = src / "images" / ("train" if fmt == "yolo" else "")
    Image.open(folder / images[0].name).save(folder / "part_001.jpg")  # a good part's pixels
    if fmt == "coco":
        coco = json.loads((src / "annotations.json").read_text())
        coco["images"].append({"id": 100, "file_name": "part_001.jpg", "width": 64, "height": 64})
        (src / "annotations.json").write_text(json.dumps(coco))
    report = import_dataset(session, fmt, src, "d", tmp_path / "ds", classes=CLASSES)
    # VOC's annotation names its image; otherwise the first (in the source's order) is kept.
    kept, reported = (
        ("part_001.jpg", "part_001.png") if fmt == "yolo" else ("part_001.png", "part_001.jpg")
    )
    assert [p.name for p in (report.root / "images").rglob("part_001.*")] == [kept]
    [issue] = report.issues
    assert issue.file == reported
    assert issue.reason.startswith(
        f"same name as {kept} apart from its extension: its label file would be shared"
    )
    assert report.n_images == 8
    assert _label_lines(report.root)["part_001"] == _yolo_lines(images[1])


def test_a_voc_filename_left_stale_by_a_rename_moves_no_boxes(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """part_001.xml naming part_002.png once gave part_002 part_001's box, dropped part_002.xml's
    own and imported the defective part_001 as a good part: said only as "duplicate file name"."""
    src = tmp_path / "src"
    images = write_voc(src, n=8)
    xml = src / "annotations" / "part_001.xml"
    text = xml.read_text()
    xml.write_text(text.replace("part_001.png", "part_002.png"))
    # No image of its own name, and it names an image that has an annotation file of its own.
    (src / "annotations" / "moved.xml").write_text(text.replace("part_001.png", "part_003.png"))
    report = import_dataset(session, "voc", src, "v", tmp_path / "ds", classes=CLASSES)
    labels = _label_lines(report.root)
    for image in images[1:4]:
        assert labels[Path(image.name).stem] == _yolo_lines(image) != []
    assert report.n_images == 8
    warning, left_out = report.issues
    assert warning.file == "part_001.xml" and not warning.left_out
    assert "<filename> part_002.png names another image" in warning.reason
    assert "taken for part_001.png" in warning.reason
    assert str(left_out) == (
        "moved.xml: no image of its own name, and its <filename> part_003.png names the image "
        "of part_003.xml"
    )


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco"])
def test_a_nan_coordinate_is_refused(session, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """Every comparison with NaN is false: a NaN box passed every check of the box."""
    import re

    src = tmp_path / "src"
    {"voc": write_voc, "yolo": write_yolo, "coco": write_coco}[fmt](src, n=4)
    if fmt == "voc":
        xml = src / "annotations" / "part_001.xml"
        xml.write_text(re.sub(r"<xmin>\d+</xmin>", "<xmin>nan</xmin>", xml.read_text()))
    elif fmt == "yolo":
        (src / "labels" / "train" / "part_001.txt").write_text("0 nan 0.5 0.2 0.2\n")
    else:
        coco = json.loads((src / "annotations.json").read_text())
        coco["annotations"][0]["bbox"][0] = float("nan")  # written as NaN, read back as nan
        (src / "annotations.json").write_text(json.dumps(coco))
    report = import_dataset(session, fmt, src, "n", tmp_path / "ds", classes=CLASSES)
    assert {i.file: i.reason for i in report.issues} == {
        "part_001.png": "unreadable label: NaN coordinate"
    }
    assert report.n_images == 3 and not list(report.root.rglob("part_001.*"))


def test_a_yolo_segmentation_polygon_is_refused_not_read_as_a_box(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    write_yolo(src, n=4)
    # Its first five values make a fine box: they were taken for one.
    (src / "labels" / "train" / "part_001.txt").write_text("0 0.5 0.5 0.25 0.25 0.75 0.75\n")
    report = import_dataset(session, "yolo", src, "p", tmp_path / "ds", classes=CLASSES)
    [issue] = report.issues
    assert issue.file == "labels/train/part_001.txt"
    assert issue.reason == (
        "unreadable label: line 1 has 7 values: a segmentation polygon, not a box: export boxes"
    )
    assert report.n_images == 3


def test_a_box_past_the_edge_by_a_rounding_error_is_clipped(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """x2 = 64.00003 on a 64 px image rejected the image as "(48, 24, 64, 40) outside"."""
    src = tmp_path / "src"
    write_yolo(src, n=4)
    (src / "labels" / "train" / "part_001.txt").write_text("1 0.875000 0.5 0.250001 0.25\n")
    (src / "labels" / "train" / "part_002.txt").write_text("1 0.9 0.5 0.2500003 0.25\n")
    report = import_dataset(session, "yolo", src, "r", tmp_path / "ds", classes=CLASSES)
    assert _label_lines(report.root)["part_001"] == ["1 0.875000 0.500000 0.250000 0.250000"]
    [issue] = report.issues  # 1.6 px past the edge: refused, with its real coordinates
    assert issue.file == "part_002.png"
    assert issue.reason == "box (49.59999, 24, 65.60001, 40) outside the 64x64 image"


def test_label_files_without_images_and_unlisted_coco_images_are_reported(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_yolo(tmp_path / "yolo", n=4)
    (tmp_path / "yolo" / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "yolo" / "labels" / "classes.txt").write_text("scratch\nspot\n")  # not a label
    # An image of a type not taken was reported as no image at all.
    (tmp_path / "yolo" / "labels" / "train" / "moving.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "yolo" / "images" / "train" / "moving.gif").write_bytes(b"GIF89a")
    report = import_dataset(session, "yolo", tmp_path / "yolo", "y", tmp_path / "ds")
    assert [str(i) for i in report.issues] == [
        "labels/train/moving.txt: label file with no image: its image moving.gif is of a type "
        "not taken (.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)",
        "labels/train/orphan.txt: label file with no image: no images/train/orphan.* found",
    ]
    images = write_coco(tmp_path / "coco", n=4)
    folder = tmp_path / "coco" / "images"
    shutil.copy(folder / images[1].name, folder / "unlisted.png")
    report = import_dataset(session, "coco", tmp_path / "coco", "c", tmp_path / "ds")
    [issue] = report.issues
    assert issue.file == "images/unlisted.png" and "not listed in annotations.json" in issue.reason
    assert report.n_images == 4


def test_voc_class_names_that_look_alike_are_warned_about(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """'Scratch' in one file and 'spott' in another silently made four classes of two."""
    src = tmp_path / "src"
    write_voc(src, n=12)  # scratch in part_002, 006 and 010; spot in 001, 003, 005, ...
    for stem, old, new in [("part_002", "scratch", "Scratch"), ("part_003", "spot", "spott")]:
        xml = src / "annotations" / f"{stem}.xml"
        xml.write_text(xml.read_text().replace(f">{old}<", f">{new}<"))
    report = import_dataset(session, "voc", src, "t", tmp_path / "ds")
    assert report.classes == ["Scratch", "scratch", "spot", "spott"]
    assert report.n_images == 12  # warned about, not left out
    warned = {i.file: i.reason for i in report.issues if "--classes scratch,spot" in i.reason}
    assert set(warned) == {"part_002.xml", "part_003.xml"}
    assert (
        "class 'Scratch' (1 file) differs only in case, spacing or '_'/'-' from 'scratch' (2 files)"
        in warned["part_002.xml"]
    )
    assert (
        "class 'spott' (1 file) looks like a misspelling of 'spot' (5 files)"
        in warned["part_003.xml"]
    )
    assert len(report.issues) == 2
    # A plural is not a misspelling: said as what it is.
    xml = src / "annotations" / "part_006.xml"
    xml.write_text(xml.read_text().replace(">scratch<", ">scratches<"))
    plural = import_dataset(session, "voc", src, "t3", tmp_path / "ds")
    assert any(
        "class 'scratches' (1 file) is the singular or plural of 'Scratch' (1 file)" in str(i)
        for i in plural.issues
    ), "\n".join(str(i) for i in plural.issues)
    given = import_dataset(session, "voc", src, "t2", tmp_path / "ds", classes=CLASSES)
    assert not any("--classes" in i.reason for i in given.issues)  # the classes were given


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco"])
def test_an_image_over_the_pixel_limit_is_left_out_with_its_size(
    session, tmp_path: Path, fmt: str
) -> None:  # type: ignore[no-untyped-def]
    """A 20000x20000 image (a decompression bomb's size) stopped the whole import with Pillow's
    traceback; one of 72 MP, under Pillow's limit, was taken to train on, though stations
    refuse any image over theirs."""
    src = tmp_path / "src"
    images = {"voc": write_voc, "yolo": write_yolo, "coco": write_coco}[fmt](src, n=8)
    paths = {p.name: p for p in src.rglob("*.png")}
    Image.new("1", (20000, 20000)).save(paths[images[1].name])
    Image.new("1", (9000, 8000)).save(paths[images[2].name])
    report = import_dataset(session, fmt, src, "big", tmp_path / "ds", classes=CLASSES)
    reasons = {Path(issue.file).name: issue.reason for issue in report.issues}
    assert reasons[images[1].name] == (
        "image too large: 400 MP is over the 64 MP limit stations inspect (DEFECTS_MAX_MEGAPIXELS)"
    )
    assert reasons[images[2].name] == (
        "image too large: 9000x8000 is over the 64 MP limit stations inspect "
        "(DEFECTS_MAX_MEGAPIXELS)"
    )
    assert report.n_images == 6


def test_a_jpeg_cut_short_is_left_out_as_stations_refuse_it(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pillow's verify reads no JPEG data: a half-copied JPEG was imported, to be trained on
    grey below the cut, while stations refuse it as truncated."""
    src = tmp_path / "src"
    images = write_yolo(src, n=4)
    for i, image in enumerate(images[:2]):
        png = next(src.rglob(image.name))
        jpeg = png.with_suffix(".jpg")
        Image.open(png).save(jpeg, quality=95)
        png.unlink()
        if i == 0:
            jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
        else:  # whole, with padding after its end marker: kept
            jpeg.write_bytes(jpeg.read_bytes() + b"\x00" * 16)
    report = import_dataset(session, "yolo", src, "cut", tmp_path / "ds", classes=CLASSES)
    reasons = {Path(issue.file).stem: issue.reason for issue in report.issues}
    stem = Path(images[0].name).stem
    assert reasons[stem].startswith("corrupt or truncated image"), reasons
    assert Path(images[1].name).stem not in reasons
    assert report.n_images == 3


def test_a_png_cut_short_or_damaged_is_left_out_with_its_file_and_why(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A PNG is refused at import when its chunks do not read whole to their end: cut in its
    pixel data, cut before its end chunk, or a byte of its pixel data changed (its CRC)."""
    src = tmp_path / "src"
    images = write_yolo(src, n=5)
    paths = [next(src.rglob(image.name)) for image in images[:3]]
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    paths[1].write_bytes(data[: data.index(b"IEND") - 4])
    damaged = bytearray(paths[2].read_bytes())
    damaged[damaged.index(b"IDAT") + 10] ^= 0xFF
    paths[2].write_bytes(bytes(damaged))
    report = import_dataset(session, "yolo", src, "cut", tmp_path / "ds", classes=CLASSES)
    reasons = {Path(issue.file).name: issue.reason for issue in report.issues}
    assert sorted(reasons) == sorted(path.name for path in paths)
    assert all(reason.startswith("unreadable image (") for reason in reasons.values()), reasons
    assert report.n_images == 2


def test_a_png_without_exif_in_its_header_is_not_read_whole_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """To look for an eXIf chunk after its pixel data, every PNG without EXIF in its header
    was read into memory whole once more after its check: its chunks' headers are enough. One
    with such a chunk is still decoded, as stations decode it, for its orientation."""
    from training import datasets

    plain = tmp_path / "plain.png"
    Image.new("L", (40, 30), 128).save(plain)
    late = tmp_path / "late.png"  # (an eXIf chunk, orientation 1, moved after the pixel data)
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.new("L", (40, 30), 128).save(late, exif=exif.tobytes())
    data = late.read_bytes()
    start = data.index(b"eXIf") - 4
    end = start + 12 + int.from_bytes(data[start : start + 4], "big")
    chunk, data = data[start:end], data[:start] + data[end:]
    late.write_bytes(data[: data.index(b"IEND") - 4] + chunk + data[data.index(b"IEND") - 4 :])
    read_whole: list[str] = []
    decoded: list[str] = []
    read_bytes, load = Path.read_bytes, Image.Image.load

    def reading(path: Path) -> bytes:
        read_whole.append(path.name)
        return read_bytes(path)

    def loading(image: Image.Image):  # type: ignore[no-untyped-def]
        decoded.append(Path(str(getattr(image, "filename", ""))).name)
        return load(image)

    monkeypatch.setattr(Path, "read_bytes", reading)
    monkeypatch.setattr(Image.Image, "load", loading)
    assert datasets._image_info(plain) == (40, 30, "L")
    assert read_whole == [] and "plain.png" not in decoded
    assert datasets._image_info(late) == (40, 30, "L")
    assert "late.png" in decoded


def test_a_postscript_file_named_as_an_image_is_left_out_of_an_import(tmp_path: Path) -> None:
    """It was imported as a 64x64 image: stations refuse it (Ghostscript would draw it), and
    training read it as an image it is not."""
    from training import datasets

    postscript = tmp_path / "part.png"
    postscript.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n")
    with pytest.raises(ValueError, match=r"^not an image file \(PostScript"):
        datasets._image_info(postscript)


def test_an_image_of_more_than_8_bits_is_stored_as_stations_decode_it(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A 12-bit camera's image in a 16-bit PNG: ultralytics reads its top 8 bits (nearly black,
    mean 7), stations scale it by the bits used (mean 124). Training must see what stations do."""
    from inspection.images import decode_image

    src = tmp_path / "src"
    images = write_yolo(src, n=4)
    path = src / "images" / "train" / images[1].name
    twelve_bit = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 16
    Image.fromarray(twelve_bit).save(path)
    assert Image.open(path).mode.startswith("I")
    report = import_dataset(session, "yolo", src, "b", tmp_path / "ds", classes=CLASSES)
    with Image.open(report.root / "images" / "train" / images[1].name) as stored:
        assert stored.mode in ("L", "RGB")
        pixels = np.asarray(stored)
    assert np.array_equal(pixels, decode_image(path.read_bytes()).source)
    assert pixels.mean() > 100
    assert report.converted == 1 and report.n_images == 4
    [issue] = report.issues
    assert issue.file == images[1].name and not issue.left_out
    assert issue.reason.startswith("1 image(s) of more than 8 bits")
    assert _label_lines(report.root)[Path(images[1].name).stem] == _yolo_lines(images[1])


def test_a_reviewed_pgm_or_ppm_part_is_stored_as_png_so_that_training_reads_it(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A station judges a camera's PGM/PPM and keeps it as it came; exported from the Review
    page, it was copied into the dataset as .pgm, which the training library does not read:
    the part passed over in training without a word. It is stored as stations decode it, PNG."""
    from inspection.images import decode_image

    store = tmp_path / "store"
    store.mkdir()
    rng = np.random.default_rng(5)
    parts = []
    for name, mode in (("a1.pgm", "L"), ("b2.ppm", "RGB"), ("c3.png", "RGB")):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(
            store / name, "PNG" if name.endswith("png") else "PPM"
        )
        parts.append(LabeledImage(store / name, 0, 0, [Box(0, 8, 8, 30, 30)], boxes_as_judged=True))
    split_of = {"a1.pgm": "train", "b2.ppm": "val", "c3.png": "train"}
    report = write_dataset(
        session, "r", "reviews", "reviews", CLASSES, parts, [], tmp_path / "ds", split_of
    )
    assert report.n_images == 3
    stored = sorted(p.name for p in (report.root / "images").rglob("*.*"))
    assert stored == ["a1.png", "b2.png", "c3.png"]
    with Image.open(report.root / "images" / "val" / "b2.png") as image:
        assert np.array_equal(
            np.asarray(image), decode_image((store / "b2.ppm").read_bytes()).source
        )
    assert (report.root / "splits" / "val.txt").read_text() == "b2.png\n"
    [issue] = report.issues
    assert issue.reason.startswith("2 image(s) of a type the training library does not read")
    assert not issue.left_out


def test_replacing_a_dataset_that_a_model_was_trained_on_keeps_it_for_that_model(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """--replace deleted the old data while model versions trained on it kept pointing at the
    dataset, which then described the new data."""
    from db.models import ModelKind, ModelVersion

    write_yolo(tmp_path / "old", n=6)
    first = import_dataset(session, "yolo", tmp_path / "old", "y", tmp_path / "ds", classes=CLASSES)
    old_row = session.query(Dataset).filter_by(name="y").one()
    version = ModelVersion(
        name="v1", kind=ModelKind.DETECTOR, architecture="yolo", file_path="v1.pt", sha256="0" * 64
    )
    version.dataset_id = old_row.id
    session.add(version)
    session.flush()
    write_yolo(tmp_path / "new", n=4, seed=1)
    again = import_dataset(
        session, "yolo", tmp_path / "new", "y", tmp_path / "ds", classes=CLASSES, replace=True
    )
    session.refresh(version)
    kept = version.dataset
    assert kept is not None and kept.name.startswith("y-before-")
    assert kept.split_counts == first.split_counts
    kept_root = Path(kept.root_path)
    assert kept_root == (tmp_path / "ds" / kept.name).resolve()
    assert len(list((kept_root / "images").rglob("*.png"))) == 6
    assert yaml.safe_load((kept_root / "data.yaml").read_text())["path"] == kept.root_path
    new = session.query(Dataset).filter_by(name="y").one()
    assert new.id != kept.id and again.n_images == 4
    assert len(list((tmp_path / "ds" / "y" / "images").rglob("*.png"))) == 4
    [issue] = again.issues
    assert "v1" in issue.reason and f"kept as dataset {kept.name}" in issue.reason


def test_coco_crowd_regions_and_unknown_categories_are_said_and_left_out(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A crowd region (iscrowd 1) is many defects under one box, not one: it was imported as
    an ordinary box. An unknown category id was reported as "unknown class index -1"."""
    images = write_coco(tmp_path / "src", n=8)
    path = tmp_path / "src" / "annotations.json"
    coco = json.loads(path.read_text())
    name_of = {i: image["file_name"] for i, image in enumerate(coco["images"])}
    crowd, not_given, unknown = coco["annotations"][:3]  # images 1, 2 (scratch), 3
    crowd["iscrowd"] = 1
    unknown["category_id"] = 7
    coco["annotations"][3]["iscrowd"] = 0  # an ordinary box, said so
    path.write_text(json.dumps(coco))
    report = import_dataset(session, "coco", tmp_path / "src", "c", tmp_path / "ds")
    reasons = {issue.file: issue.reason for issue in report.issues}
    assert set(reasons) == {name_of[crowd["image_id"]], name_of[unknown["image_id"]]}
    assert "crowd region (iscrowd 1)" in reasons[name_of[crowd["image_id"]]]
    assert reasons[name_of[unknown["image_id"]]] == (
        f"annotation {unknown['id']}: category id 7 is not among the categories of annotations.json"
    )
    assert all(issue.left_out for issue in report.issues)
    assert report.n_images == 8 - 2
    assert not list(report.root.rglob(name_of[crowd["image_id"]]))
    # A category left out of --classes: named, not "-1".
    report = import_dataset(
        session, "coco", tmp_path / "src", "d", tmp_path / "ds", classes=["spot"]
    )
    reason = next(i.reason for i in report.issues if i.file == name_of[not_given["image_id"]])
    category = images[not_given["image_id"]].boxes[0][0]
    assert reason == (
        f"annotation {not_given['id']}: category {category!r} (id {not_given['category_id']}) "
        "is not among the classes given"
    )


def test_deeppcb_imports_defective_boards_and_their_templates_as_good_parts(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """DeepPCB's layout could not be imported at all: its test images are the defective parts,
    their templates the good ones, and the authors' split is kept (every fifth trainval board
    to val, as the bench's figures were measured)."""
    from training.datasets import DEEPPCB_CLASSES

    data = write_deeppcb(tmp_path / "deeppcb", boards=13, test=2)  # boards 100 to 112
    (data / "group1" / "1_not" / "101.txt").write_text("3,4,15,16,2\n")  # commas, as published
    (data / "group1" / "1_not" / "102.txt").write_text("3 4 15 16 7\n")
    (data / "group1" / "1_not" / "103.txt").unlink()
    (data / "group1" / "1" / "104_temp.jpg").unlink()
    shutil.copy(data / "group1" / "1" / "100_temp.jpg", data / "group1" / "1" / "999_temp.jpg")
    report = import_dataset(session, "deeppcb", tmp_path / "deeppcb", "pcb", tmp_path / "ds")
    assert report.classes == DEEPPCB_CLASSES
    assert {str(issue) for issue in report.issues} == {
        "group1/1/102_test.jpg: unreadable box file group1/1_not/102.txt: line 1: defect type 7 "
        "is not one of 1 to 6",
        "group1/1/103_test.jpg: box file group1/1_not/103.txt not found",
        "group1/1/104_temp.jpg: warning: template not found: the board has no good part",
        "group1/1/999_temp.jpg: not listed in trainval.txt or test.txt: not imported",
    }
    # trainval boards 100 to 110: 100 and 105 (and 110) to val; 111 and 112 to test.
    splits = {s: (report.root / "splits" / f"{s}.txt").read_text().split() for s in SPLITS}
    assert splits["val"] == [
        f"{n}_{kind}.jpg" for n in (100, 105, 110) for kind in ("temp", "test")
    ]
    assert splits["test"] == [f"{n}_{kind}.jpg" for n in (111, 112) for kind in ("temp", "test")]
    # train: 8 boards, less the test images of 102 and 103 and the template of 104
    assert report.split_counts["train"] == {"images": 13, "boxes": 6, "good": 7}
    labels = _label_lines(report.root)
    assert labels["100_temp"] == [] and labels["101_temp"] == []
    assert labels["101_test"] == [f"1 {9 / 64:.6f} {10 / 64:.6f} {12 / 64:.6f} {12 / 64:.6f}"]
    assert not list(report.root.rglob("102_test.jpg")) and not list(
        report.root.rglob("103_test.jpg")
    )
    assert list(report.root.rglob("102_temp.jpg"))  # its board's good image is still good


def test_deeppcb_is_a_format_of_the_import_command(tmp_path: Path) -> None:
    """`defects import deeppcb` refused the format; the PCBData folder or the one above it
    both name the dataset."""
    from typer.testing import CliRunner

    from training.cli import app

    data = write_deeppcb(tmp_path / "deeppcb", boards=8, test=2)
    for src, name in ((tmp_path / "deeppcb", "pcb"), (data, "pcb2")):
        result = CliRunner().invoke(app, ["import", "deeppcb", str(src), "--name", name])
        assert result.exit_code == 0, result.output
        assert f"dataset {name}: 6 classes" in result.output
        cells = [line.replace("│", " ").split() for line in result.output.splitlines()]
        rows = {row[0]: row[1:] for row in cells if row[:1] in (["train"], ["val"], ["test"])}
        assert rows == {"train": ["8", "4", "4"], "val": ["4", "2", "2"], "test": ["4", "2", "2"]}


def test_deeppcb_layout_without_split_lists_keeps_each_board_in_one_split(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A user's own boards in DeepPCB's layout, without the authors' lists: every `_test`
    image is a board, and its template goes to the same split (a board in train and its good
    image in test would leak what the model saw into what measures it)."""
    data = write_deeppcb(tmp_path / "pcb", boards=20)
    (data / "trainval.txt").unlink()
    (data / "test.txt").unlink()
    shutil.copy(data / "group1" / "1" / "100_temp.jpg", data / "group1" / "1" / "999_temp.jpg")
    report = import_dataset(session, "deeppcb", data, "own", tmp_path / "ds")
    assert [str(issue) for issue in report.issues] == [
        "group1/1/999_temp.jpg: a template without its test image: not imported"
    ]
    split_of = {
        name: split
        for split in SPLITS
        for name in (report.root / "splits" / f"{split}.txt").read_text().split()
    }
    assert len(split_of) == 40
    assert all(split_of[f"{n}_test.jpg"] == split_of[f"{n}_temp.jpg"] for n in range(100, 120))
    assert sum(c["good"] for c in report.split_counts.values()) == 20


def test_images_of_the_same_bytes_are_warned_about_and_imported(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """DeepPCB holds three byte-identical templates under three names: a copy across splits
    measures the model on an image it learned from, and stations judge copies as one part."""
    images = write_voc(tmp_path / "src", n=12)
    folder = tmp_path / "src" / "images"
    shutil.copyfile(folder / images[0].name, folder / images[1].name)  # train and val
    shutil.copyfile(folder / images[2].name, folder / images[3].name)  # both in train
    splits = write_splits(tmp_path / "splits", images)
    report = import_dataset(session, "voc", tmp_path / "src", "s", tmp_path / "ds", splits, CLASSES)
    assert sum(v["images"] for v in report.split_counts.values()) == 12  # all imported
    said = sorted(str(w) for w in report.warnings)
    assert len(said) == 2, said
    across, within = said if images[0].name in said[0] else said[::-1]
    assert images[0].name in across and images[1].name in across
    assert "the model is measured on an image it learned from" in across
    assert images[2].name in within and images[3].name in within
    assert within.endswith("(both in train)")


def test_a_voc_filename_without_its_extension_names_its_own_image(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Labelling tools (and NEU-DET, 174 of its files) write <filename>part_001</filename>: that
    is the image of the file's own name, not another one left stale by a rename."""
    src = tmp_path / "src"
    images = write_voc(src, n=8)
    xml = src / "annotations" / "part_001.xml"
    xml.write_text(xml.read_text().replace("part_001.png", "part_001"))
    report = import_dataset(session, "voc", src, "v", tmp_path / "ds", classes=CLASSES)
    assert report.issues == []
    assert report.n_images == 8
    assert _label_lines(report.root)["part_001"] == _yolo_lines(images[1]) != []


def test_an_import_that_keeps_no_image_names_its_first_problem_as_the_report_does(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The error showed the problem as Python's repr of a list: "e.g. [ImportIssue(file=...)]"."""
    src = tmp_path / "src"
    write_voc(src, n=4)
    for image in (src / "images").iterdir():
        image.write_bytes(b"not an image")
    with pytest.raises(UserError) as refused:
        import_dataset(session, "voc", src, "v", tmp_path / "ds", classes=CLASSES)
    message = str(refused.value)
    assert message.startswith(f"no usable images in {src} (")
    assert "ImportIssue(" not in message and "[" not in message
    assert "e.g. part_00" in message


def test_a_box_given_twice_is_kept_once_and_said(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """NEU-DET's crazing_120 lists one box twice: the import counted it twice, ultralytics once."""
    images = write_voc(tmp_path / "src", n=6)
    annotated = next(i for i in images if i.boxes)
    xml = tmp_path / "src" / "annotations" / f"{Path(annotated.name).stem}.xml"
    text = xml.read_text()
    start, end = text.index("<object>"), text.index("</object>") + len("</object>")
    xml.write_text(text[:end] + text[start:end] + text[end:])  # its first box again
    report = import_dataset(session, "voc", tmp_path / "src", "s", tmp_path / "ds", None, CLASSES)
    assert sum(v["boxes"] for v in report.split_counts.values()) == sum(
        len(i.boxes) for i in images
    )
    assert [str(w) for w in report.warnings] == [
        f"{annotated.name}: warning: 1 box(es) given twice: kept once"
    ]


def test_replacing_a_dataset_of_a_moved_data_folder_keeps_the_old_one_for_its_model(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """After the data folder moved, the replaced dataset's recorded folder was gone, so the
    import took its files to be elsewhere and deleted them with the folder it replaced: the
    model version trained on them then named a dataset whose files were nowhere."""
    from db.models import ModelKind, ModelVersion

    write_yolo(tmp_path / "old", n=6)
    import_dataset(
        session, "yolo", tmp_path / "old", "y", tmp_path / "before" / "ds", classes=CLASSES
    )
    version = ModelVersion(
        name="v1", kind=ModelKind.DETECTOR, architecture="yolo", file_path="v1.pt", sha256="0" * 64
    )
    version.dataset_id = session.query(Dataset).filter_by(name="y").one().id
    session.add(version)
    session.flush()
    (tmp_path / "before" / "ds").rename(tmp_path / "ds")  # the data folder on another disk
    write_yolo(tmp_path / "new", n=4, seed=1)
    import_dataset(
        session, "yolo", tmp_path / "new", "y", tmp_path / "ds", classes=CLASSES, replace=True
    )
    session.refresh(version)
    kept_root = tmp_path / "ds" / version.dataset.name
    assert Path(version.dataset.root_path) == kept_root.resolve()
    assert len(list((kept_root / "images").rglob("*.png"))) == 6
    assert len(list((tmp_path / "ds" / "y" / "images").rglob("*.png"))) == 4


def test_coco_and_deeppcb_lists_cannot_reach_images_outside_the_dataset(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A COCO `file_name` of `../x.png`, `/abs/x.png` or `C:\\x.png`, or a DeepPCB list line
    with such paths, brought a file from anywhere this user can read into the dataset; so did
    an image beside SRC (in its parent folder) that SRC's json named."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    src = tmp_path / "coco" / "src"
    images = write_coco(src, n=6)
    for image in images[:3]:  # the defective or good parts a stranger's list would take
        shutil.copy(src / "images" / image.name, outside / image.name)
        shutil.copy(src / "images" / image.name, tmp_path / "coco" / f"beside_{image.name}")
    coco = json.loads((src / "annotations.json").read_text())
    escaping = [
        f"../../elsewhere/{images[0].name}",
        str(outside / images[1].name),
        f"C:\\elsewhere\\{images[2].name}",
        f"beside_{images[0].name}",  # in SRC's parent folder, outside SRC
    ]
    for record, name in zip(coco["images"], escaping, strict=False):
        record["file_name"] = name
    (src / "annotations.json").write_text(json.dumps(coco))
    report = import_dataset(session, "coco", src, "c", tmp_path / "ds")
    assert report.n_images == 2
    reasons = {issue.file: issue.reason for issue in report.left_out}
    assert (
        reasons[escaping[0]]
        == f"file_name is a path through '..': images are read only inside {src}"
    )
    assert reasons[escaping[1]].startswith("file_name is an absolute path")
    assert reasons[escaping[2]].startswith("file_name is a path on a drive or a network share")
    assert reasons[escaping[3]] == "image file not found"
    imported = {p.name for p in (tmp_path / "ds" / "c" / "images").rglob("*") if p.is_file()}
    assert imported == {image.name for image in images[4:]}

    data = write_deeppcb(tmp_path / "deeppcb", boards=6, test=2)
    stolen = tmp_path / "stolen"
    shutil.copytree(data / "group1", stolen)
    trainval = (data / "trainval.txt").read_text().splitlines()
    trainval[0] = "../../stolen/1/100.jpg ../../stolen/1_not/100.txt"
    trainval[1] = f"{stolen}/1/101.jpg {stolen}/1_not/101.txt"
    (data / "trainval.txt").write_text("\n".join(trainval) + "\n")
    report = import_dataset(session, "deeppcb", data, "p", tmp_path / "ds")
    left_out = [str(issue) for issue in report.left_out]
    assert (
        f"trainval.txt: line 1: ../../stolen/1/100.jpg is a path through '..': images are read only inside {data}"
        in left_out
    )
    assert any(line.startswith("trainval.txt: line 2: /") for line in left_out)
    assert report.n_images == 8  # boards 102 to 105, each with its template


@pytest.mark.parametrize("fmt", ["voc", "yolo"])
def test_a_multi_page_tiff_is_left_out_as_stations_refuse_it(
    session, tmp_path: Path, fmt: str
) -> None:  # type: ignore[no-untyped-def]
    """A camera's stack saved as one TIFF was imported on its first page: a defect on another
    page was trained as background, while stations refuse the same file with a reason."""
    src = tmp_path / "src"
    images = {"voc": write_voc, "yolo": write_yolo}[fmt](src, n=4)
    folder = src / "images" / ("train" if fmt == "yolo" else "")
    stack = folder / images[1].name  # a defective part, its label kept
    pages = [Image.open(stack).convert("RGB"), Image.new("RGB", (64, 64), (200, 40, 40))]
    stack.unlink()
    pages[0].save(stack.with_suffix(".tif"), save_all=True, append_images=pages[1:])
    report = import_dataset(session, fmt, src, "d", tmp_path / "ds")
    [issue] = report.left_out
    assert issue.file.endswith("part_001.tif")
    assert issue.reason == (
        "2 pages or frames in one file: save one image per part; stations refuse it too"
    )
    assert report.n_images == 3


def test_named_pipes_among_the_files_of_an_import_are_listed_not_read(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An image, a label or an annotation file that is a named pipe was opened, and the import
    waited for ever for a writer; a label that is one was taken for no label (a good part)."""
    pipe = "not a regular file but a named pipe: not read"
    yolo = tmp_path / "yolo"
    images = write_yolo(yolo, n=4)
    os.mkfifo(yolo / "images" / "train" / "piped.png")
    (yolo / "labels" / "train" / "piped.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    label = yolo / "labels" / "train" / f"{Path(images[1].name).stem}.txt"
    label.unlink()
    os.mkfifo(label)
    voc = tmp_path / "voc"
    write_voc(voc, n=4)
    os.mkfifo(voc / "images" / "piped.png")  # no annotation: it would be a good part
    os.mkfifo(voc / "annotations" / "part_005.xml")
    coco = tmp_path / "coco"
    write_coco(coco, n=4)
    os.mkfifo(coco / "other.json")
    with within(10):
        yolo_report = import_dataset(session, "yolo", yolo, "y", tmp_path / "ds")
        voc_report = import_dataset(session, "voc", voc, "v", tmp_path / "ds")
        coco_report = import_dataset(session, "coco", coco, "c", tmp_path / "ds")
    assert sorted(str(issue) for issue in yolo_report.left_out) == [
        f"labels/train/part_001.txt: unreadable label: {pipe}",
        f"train/piped.png: {pipe}",
    ]
    assert yolo_report.n_images == 3
    assert sorted(str(issue) for issue in voc_report.left_out) == [
        f"part_005.xml: unreadable annotation: {pipe}",
        f"piped.png: {pipe}",
    ]
    assert voc_report.n_images == 4
    assert coco_report.n_images == 4 and not coco_report.issues


def test_a_yolo_import_reads_each_image_header_once(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A labeled image's header was read (and verified) to scale its boxes, then again to
    check it: two opens of every defective part of a large dataset."""
    from training import datasets

    write_yolo(tmp_path / "src", n=8)
    reads: Counter[str] = Counter()
    image_info = datasets._image_info

    def counted(path: Path) -> tuple[int, int, str]:
        reads[path.name] += 1
        return image_info(path)

    monkeypatch.setattr(datasets, "_image_info", counted)
    report = import_dataset(session, "yolo", tmp_path / "src", "y", tmp_path / "ds")
    assert report.n_images == 8 and not report.issues
    assert sorted(reads.values()) == [1] * 8


def test_an_import_without_split_lists_gives_val_what_training_needs(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Split by the names' hash alone, a few parts left val without a good part (here) or
    without any part, and training refused the import it had just been told to train on."""
    write_voc(tmp_path / "src", n=8)  # by hash: val holds one defective part and no good one
    report = import_dataset(
        session, "voc", tmp_path / "src", "few", tmp_path / "ds", classes=CLASSES
    )
    assert report.split_counts["val"]["good"] >= 1
    assert report.split_counts["val"]["images"] > report.split_counts["val"]["good"]
    assert report.split_counts["train"]["images"] > report.split_counts["train"]["good"]


def test_an_import_without_split_lists_gives_test_a_defect_and_a_good_part(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """24 camera-named parts (IMG_0000.png...) split by their names' hash put none in test, and
    README's first-model recipe, `defects evaluate V --data D --split test`, was refused. Test
    now gets a defect and a good part; every other part keeps its hash's split."""
    from training.datasets import _hash_split

    src = tmp_path / "src"
    images = write_voc(src, n=24)
    for image in images:  # (by hash: 23 in train, one good part in val, none in test)
        stem, renamed = Path(image.name).stem, f"img_{int(image.name[5:8]):04d}"
        (src / "images" / image.name).rename(src / "images" / f"{renamed}.png")
        if image.boxes:  # (a good part has no annotation file)
            xml = src / "annotations" / f"{stem}.xml"
            xml.with_stem(renamed).write_text(xml.read_text().replace(stem, renamed))
            xml.unlink()
    report = import_dataset(session, "voc", src, "cam", tmp_path / "ds", classes=CLASSES)
    counts = report.split_counts
    assert counts["test"]["good"] >= 1 and counts["test"]["images"] > counts["test"]["good"]
    assert counts["val"]["good"] >= 1 and counts["val"]["images"] > counts["val"]["good"]
    assert split_image_paths(report.root, "test")  # (the recipe's evaluate has parts to run on)
    moved = [
        path.name
        for split in SPLITS
        for path in split_image_paths(report.root, split)
        if _hash_split(path.name) != split
    ]
    assert len(moved) == 3  # a defect to val, a defect and a good part to test
    # Two defective parts: train and val each keep one, and test stays as the hash left it.
    few = [LabeledImage(Path(f"img_{i:04d}.png"), 8, 8, [Box(0, 1, 1, 4, 4)]) for i in (1, 2)]
    few.append(LabeledImage(Path("img_0020.png"), 8, 8, []))
    assert sorted(fill_splits(few).values()) == ["train", "val", "val"]


def test_voc_annotations_in_sub_folders_label_their_images(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """CVAT's VOC export keeps a task's sub-folders under Annotations/ as under JPEGImages/:
    an image in images/line2/ was found, its annotations/line2/*.xml was not, and the
    defective part was imported as a good one, said nowhere."""
    src = tmp_path / "src"
    images = write_voc(src, n=8)
    for folder in ("images", "annotations"):
        (src / folder / "line2").mkdir()
    (src / "images" / images[1].name).rename(src / "images" / "line2" / images[1].name)
    xml = src / "annotations" / f"{Path(images[1].name).stem}.xml"
    xml.rename(src / "annotations" / "line2" / xml.name)
    report = import_dataset(session, "voc", src, "v", tmp_path / "ds", classes=CLASSES)
    assert report.issues == []
    assert sum(c["good"] for c in report.split_counts.values()) == 2  # parts 0 and 4 only
    assert _label_lines(report.root)[Path(images[1].name).stem] == _yolo_lines(images[1]) != []


def test_yolo_class_names_are_read_in_index_order_or_refused_in_one_line(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A data.yaml's names keyed '0'...'11' were sorted as text ('10' before '2'), so class 2's
    boxes were imported as class 'c10' without a word; an empty data.yaml stopped the import
    with a traceback; and LabelImg's classes.txt beside its labels was not found."""
    src = tmp_path / "src"
    write_yolo(src, n=8)
    names = [f"c{i}" for i in range(12)]
    (src / "data.yaml").write_text(
        "names:\n" + "".join(f"  '{i}': {n}\n" for i, n in enumerate(names))
    )
    report = import_dataset(session, "yolo", src, "y", tmp_path / "ds")
    assert report.classes == names
    assert yaml.safe_load((report.root / "data.yaml").read_text())["names"] == dict(
        enumerate(names)
    )
    (src / "data.yaml").write_text("names:\n  0: scratch\n  2: spot\n")
    with pytest.raises(UserError, match=r"numbered \[0, 2\], not 0 to 1"):
        import_dataset(session, "yolo", src, "gap", tmp_path / "ds")
    (src / "data.yaml").write_text("names: [scratch\n")
    with pytest.raises(UserError, match="unreadable .*data.yaml"):
        import_dataset(session, "yolo", src, "bad", tmp_path / "ds")
    (src / "data.yaml").write_text("")
    (src / "labels" / "classes.txt").write_text("scratch\nspot\n")
    report = import_dataset(session, "yolo", src, "labelimg", tmp_path / "ds")
    assert report.classes == CLASSES and report.issues == []


def test_split_lists_of_stems_as_voc_writes_them_place_each_image(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """VOC's ImageSets/Main/train.txt names images by stem (part_001, not part_001.png): given
    as --splits, every image was left out as "not listed in any split file" and every line
    said as naming no image."""
    images = write_voc(tmp_path / "src", n=12)
    splits = write_splits(tmp_path / "splits", images)
    for path in splits.glob("*.txt"):
        path.write_text("".join(f"{Path(n).stem}\n" for n in path.read_text().split()))
    with (splits / "test.txt").open("a") as handle:
        handle.write("part_999\n")
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
    [issue] = report.issues
    assert issue.file == "part_999" and "not in the source" in issue.reason
    with (splits / "train.txt").open("a") as handle:
        handle.write(images[1].name + "\n")  # in val by its stem, in train by its name
    report = import_dataset(session, "voc", tmp_path / "src", "t", tmp_path / "ds", splits, CLASSES)
    assert any(
        i.file == images[1].name and "listed in train.txt and val.txt" in i.reason
        for i in report.left_out
    )


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_an_annotation_of_another_image_size_is_said(session, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """Boxes drawn on a 128x128 copy of a part, its image now 64x64 (resized after labelling),
    were imported where they fell on it, said nowhere; the import now says it, and where a box
    falls outside, gives the size as the likely reason."""
    src = tmp_path / "src"
    images = {"voc": write_voc, "coco": write_coco}[fmt](src, n=8)
    if fmt == "voc":
        for stem in ("part_001", "part_002"):
            xml = src / "annotations" / f"{stem}.xml"
            xml.write_text(xml.read_text().replace("<width>64</width>", "<width>128</width>"))
    else:
        coco_file = next(src.rglob("*.json"))
        coco = json.loads(coco_file.read_text())
        for record in coco["images"]:
            if record["file_name"] in ("part_001.png", "part_002.png"):
                record["width"] = 128
        coco_file.write_text(json.dumps(coco))
    report = import_dataset(session, fmt, src, "s", tmp_path / "ds", classes=CLASSES)
    said = {i.file: i for i in report.issues}
    assert set(said) == {"part_001.png", "part_002.png"}
    assert all(not i.left_out for i in said.values())
    assert "gives its size as 128x64, the image is 64x64" in said["part_001.png"].reason
    assert _label_lines(report.root)["part_001"] == _yolo_lines(images[1])
    # A good part's size is of no matter: it has no box to misplace.
    if fmt == "voc":
        (src / "annotations" / "part_000.xml").write_text(
            "<annotation><filename>part_000.png</filename><size><width>128</width>"
            "<height>128</height></size></annotation>"
        )
        report = import_dataset(session, fmt, src, "t", tmp_path / "ds", classes=CLASSES)
        assert sorted(i.file for i in report.issues) == ["part_001.png", "part_002.png"]
        xml = src / "annotations" / "part_002.xml"  # a box drawn past the 64 px image
        xml.write_text(re.sub(r"<xmax>\d+</xmax>", "<xmax>100</xmax>", xml.read_text()))
        report = import_dataset(session, fmt, src, "u", tmp_path / "ds", classes=CLASSES)
        [out] = report.left_out
        assert out.file == "part_002.png"
        assert "outside the 64x64 image; its annotation gives its size as 128x64" in out.reason


def _roboflow_export(root: Path, folders: dict[str, int]) -> dict[str, list[SyntheticImage]]:
    """Roboflow's YOLO export: `<folder>/images` and `<folder>/labels` for each split folder,
    and a data.yaml whose paths point above the export, as Roboflow writes them."""
    made: dict[str, list[SyntheticImage]] = {}
    for seed, (folder, n) in enumerate(folders.items()):
        images = make_images(root / folder / "images", n=n, seed=seed)
        for image in images:  # (Roboflow names each image of an export apart)
            renamed = f"{Path(image.name).stem}_{folder}.png"
            (root / folder / "images" / image.name).rename(root / folder / "images" / renamed)
            image.name = renamed
            label = root / folder / "labels" / f"{Path(renamed).stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{line}\n" for line in _yolo_lines(image)))
        made[folder] = images
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(CLASSES)}\nnames: {CLASSES}\n"
    )
    return made


def _own_splits_then_split_lists(  # type: ignore[no-untyped-def]
    session, tmp_path: Path, report, source_format: str, src: Path, made, val: str
) -> None:
    """An export of 8/4/4 images in split folders (or subsets) imported into the same splits,
    its `val` folder's images in val with their labels; imported again with --splits, placed
    by the lists (11/3/2) instead."""
    assert {k: v["images"] for k, v in report.split_counts.items()} == {
        "train": 8,
        "val": 4,
        "test": 4,
    }
    assert (report.root / "splits" / "val.txt").read_text().split() == sorted(
        image.name for image in made[val]
    )
    defect = made[val][1]
    assert _label_lines(report.root)[Path(defect.name).stem] == _yolo_lines(defect) != []
    everything = [image for images in made.values() for image in images]
    splits = write_splits(tmp_path / "splits", everything)
    again = import_dataset(session, source_format, src, "split-lists", tmp_path / "ds", splits)
    assert {k: v["images"] for k, v in again.split_counts.items()} == {
        "train": 11,
        "val": 3,
        "test": 2,
    }


def test_a_roboflow_yolo_export_is_imported_in_its_own_splits(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Roboflow's YOLO export (train/images, train/labels, valid/..., test/..., data.yaml) was
    refused as having no images folder, and a split folder named `valid` was not taken for val."""
    src = tmp_path / "src"
    made = _roboflow_export(src, {"train": 8, "valid": 4, "test": 4})
    report = import_dataset(session, "yolo", src, "rf", tmp_path / "ds")
    assert report.issues == [] and report.classes == CLASSES
    _own_splits_then_split_lists(session, tmp_path, report, "yolo", src, made, "valid")
    # An issue names the image under its split folder; a split folder without labels is refused.
    (src / "test" / "images" / made["test"][0].name).write_bytes(b"not an image")
    (src / "test" / "labels" / f"{Path(made['test'][1].name).stem}.txt").unlink()
    report = import_dataset(session, "yolo", src, "rf3", tmp_path / "ds")
    assert any(i.file == f"test/images/{made['test'][0].name}" for i in report.left_out)
    shutil.rmtree(src / "valid" / "labels")
    with pytest.raises(UserError, match="valid has no labels folder"):
        import_dataset(session, "yolo", src, "rf4", tmp_path / "ds")


def _cvat_coco_export(
    root: Path, subsets: dict[str, int], in_subset_folders: bool = True
) -> dict[str, list[SyntheticImage]]:
    """CVAT's COCO 1.0 export of a task with subsets: `annotations/instances_<subset>.json`
    for each, its images in `images/<subset>/` (in `images/` itself in older versions), each
    record's file_name the image's bare name."""
    made: dict[str, list[SyntheticImage]] = {}
    (root / "annotations").mkdir(parents=True)
    for seed, (subset, n) in enumerate(subsets.items()):
        work = root.parent / f"cvat-{subset}"
        images = write_coco(work, n=n, seed=seed)
        coco = json.loads((work / "annotations.json").read_text())
        folder = root / "images" / (subset if in_subset_folders else "")
        folder.mkdir(parents=True, exist_ok=True)
        for image, record in zip(images, coco["images"], strict=True):
            renamed = f"{Path(image.name).stem}_{subset}.png"
            (work / "images" / image.name).rename(folder / renamed)
            image.name = record["file_name"] = renamed
        for category in coco["categories"]:
            category["supercategory"] = ""
        (root / "annotations" / f"instances_{subset}.json").write_text(json.dumps(coco))
        shutil.rmtree(work)
        made[subset] = images
    return made


def test_a_cvat_coco_export_with_subsets_is_imported_in_their_splits(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """CVAT's COCO 1.0 export of a task with subsets (annotations/instances_Train.json,
    instances_Validation.json, ..., images in images/Train/...) was refused: "must hold exactly
    one COCO .json file (found 3)"."""
    src = tmp_path / "src"
    made = _cvat_coco_export(src, {"Train": 8, "Validation": 4, "testing": 4})
    report = import_dataset(session, "coco", src, "cvat", tmp_path / "ds")
    assert report.issues == [] and report.classes == CLASSES
    _own_splits_then_split_lists(session, tmp_path, report, "coco", src, made, "Validation")
    # The subsets' files must have the same categories.
    path = src / "annotations" / "instances_testing.json"
    coco = json.loads(path.read_text())
    coco["categories"][0]["name"] = "dent"
    path.write_text(json.dumps(coco))
    with pytest.raises(UserError, match="the categories of instances_Train.json and "):
        import_dataset(session, "coco", src, "cvat3", tmp_path / "ds")
    # A subset's file alone finds its images in images/<subset>/ (they were "not found").
    path.unlink()
    (src / "annotations" / "instances_Validation.json").unlink()
    report = import_dataset(session, "coco", src, "cvat4", tmp_path / "ds")
    assert report.issues == [] and report.n_images == 8


def test_a_cvat_subset_that_names_no_split_needs_splits(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A subset named `default` beside `train` and `val` would have had its images split by
    their names' hash among the others' fixed splits: refused, the file named, unless --splits
    places the images. (Older CVAT puts every subset's images in images/ itself.)"""
    src = tmp_path / "src"
    made = _cvat_coco_export(src, {"default": 4, "train": 8, "val": 4}, in_subset_folders=False)
    with pytest.raises(UserError) as refused:
        import_dataset(session, "coco", src, "cvat", tmp_path / "ds")
    assert str(refused.value) == (
        "no split is named by the subset of annotations/instances_default.json ('default'), "
        "beside annotations/instances_train.json, annotations/instances_val.json: name each "
        "subset train, val or test (or training, validation, testing; any case) in CVAT and "
        "export again, or give --splits"
    )
    everything = made["default"] + made["train"] + made["val"]
    splits = write_splits(tmp_path / "splits", everything)
    report = import_dataset(session, "coco", src, "cvat", tmp_path / "ds", splits)
    assert report.issues == [] and report.n_images == 16
    # An image in images/ listed in no subset's file is said once.
    shutil.copy(src / "images" / made["val"][0].name, src / "images" / "stray.png")
    report = import_dataset(session, "coco", src, "cvat2", tmp_path / "ds", splits)
    assert [str(i) for i in report.issues] == [
        "images/stray.png: image not listed in instances_default.json or instances_train.json "
        "or instances_val.json: not imported (list it, with no annotations for a good part)"
    ]


def test_a_name_in_two_split_folders_is_said_with_both_folders(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An image of the same name in two split folders was said by its bare name alone,
    "duplicate file name; only the first is kept": which folder's copy was kept was not said."""
    src = tmp_path / "src"
    made = _roboflow_export(src, {"train": 4, "valid": 4})
    twin = made["valid"][2].name
    (src / "train" / "images" / twin).write_bytes((src / "valid" / "images" / twin).read_bytes())
    shutil.copy(src / "valid" / "labels" / f"{Path(twin).stem}.txt", src / "train" / "labels")
    report = import_dataset(session, "yolo", src, "rf", tmp_path / "ds")
    [out] = report.left_out
    assert str(out) == (
        f"{twin}: duplicate file name (in train/images and valid/images): only the first, in "
        "train/images, is kept"
    )
    assert report.split_counts["train"]["images"] == 5


def test_a_yolo_split_folder_named_valid_is_val(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """images/valid and labels/valid (as ultralytics' own datasets name them) went to a split
    by the name's hash, not to val."""
    src = tmp_path / "src"
    write_yolo(src, n=8)
    for folder in ("images", "labels"):
        (src / folder / "train").rename(src / folder / "valid")
    report = import_dataset(session, "yolo", src, "y", tmp_path / "ds")
    assert report.split_counts["val"]["images"] == 8


def test_a_coco_polygon_without_a_bbox_gives_its_box(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An annotation with a `segmentation` polygon but no `bbox` left its image out as
    "missing 'bbox'": the box is now the polygon's extent. An RLE mask alone, which nothing
    here decodes, is still left out, with that reason."""
    images = write_coco(tmp_path / "src", n=8)
    path = tmp_path / "src" / "annotations.json"
    coco = json.loads(path.read_text())
    polygon, rle = coco["annotations"][:2]  # images 1 and 2
    x, y, w, h = polygon.pop("bbox")
    # Two polygons, the second reaching the box's far corner.
    polygon["segmentation"] = [
        [x, y, x + w / 2, y, x, y + h / 2],
        [x + w, y + h, x + 1, y + h, x + w, y + 1],
    ]
    del rle["bbox"]
    rle["segmentation"] = {"counts": "PPYo0", "size": [64, 64]}
    path.write_text(json.dumps(coco))
    report = import_dataset(session, "coco", tmp_path / "src", "c", tmp_path / "ds")
    [out] = report.issues
    assert out.file == images[2].name and "an RLE mask" in out.reason and out.left_out
    assert _label_lines(report.root)[Path(images[1].name).stem] == _yolo_lines(images[1]) != []


def test_coco_categories_of_one_name_are_one_class_said(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two categories named 'scratch' (ids 1 and 3, as merging two exports leaves them) made
    a third class 'scratch' that no box went to, both ids' boxes going to the first; they are
    now one class, and the import says so."""
    images = write_coco(tmp_path / "src", n=8)
    path = tmp_path / "src" / "annotations.json"
    coco = json.loads(path.read_text())
    coco["categories"].append({"id": 3, "name": "scratch"})
    moved = next(a for a in coco["annotations"] if a["category_id"] == 1)
    moved["category_id"] = 3
    path.write_text(json.dumps(coco))
    report = import_dataset(session, "coco", tmp_path / "src", "c", tmp_path / "ds")
    assert report.classes == CLASSES
    assert yaml.safe_load((report.root / "data.yaml").read_text())["names"] == dict(
        enumerate(CLASSES)
    )
    [warning] = report.issues
    assert not warning.left_out and warning.file == "annotations.json"
    assert "categories 1 and 3 are both named 'scratch'" in warning.reason
    image = images[moved["image_id"]]
    assert _label_lines(report.root)[Path(image.name).stem] == _yolo_lines(image) != []


def test_voc_annotation_files_are_named_by_their_path_under_annotations(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An issue named an annotation file by its bare name: part_001.xml, a second annotation
    of part_001.png beside line2/part_001.xml, was said as "part_001.xml: ... which
    part_001.xml annotates too", and an unreadable one in a sub-folder could not be told from one at the top."""
    src = tmp_path / "src"
    write_voc(src, n=8)
    (src / "annotations" / "line2").mkdir()
    shutil.copy(src / "annotations" / "part_001.xml", src / "annotations" / "line2")
    (src / "annotations" / "part_002.xml").rename(src / "annotations" / "line2" / "part_002.xml")
    (src / "images" / "line2").mkdir()
    (src / "images" / "part_002.png").rename(src / "images" / "line2" / "part_002.png")
    (src / "annotations" / "line2" / "part_002.xml").write_text("<annotation>")
    report = import_dataset(session, "voc", src, "v", tmp_path / "ds", classes=CLASSES)
    said = {i.file: i.reason for i in report.left_out}
    assert set(said) == {"part_001.xml", "line2/part_002.xml"}
    assert "which line2/part_001.xml annotates too" in said["part_001.xml"]
    assert said["line2/part_002.xml"].startswith("unreadable annotation")


def test_a_split_that_holds_no_image_is_said_so(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`evaluate --split test` on a dataset whose test split was imported empty said "the
    dataset has no test split"; it has one, holding no image."""
    write_yolo(tmp_path / "src", n=8)  # (all in images/train: val and test hold none)
    report = import_dataset(session, "yolo", tmp_path / "src", "y", tmp_path / "ds")
    assert len(split_image_paths(report.root, "train")) == 8
    with pytest.raises(UserError, match="the dataset's test split holds no image"):
        split_image_paths(report.root, "test")
    with pytest.raises(UserError, match="the dataset has no tset split"):
        split_image_paths(report.root, "tset")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_coco_polygon_of_a_coordinate_not_a_number_is_refused(
    session, tmp_path: Path, bad: float
) -> None:  # type: ignore[no-untyped-def]
    """A NaN in a polygon without a bbox, but not its first x, was passed over by min and max:
    the image was imported with a box that left that point out. It is refused with why."""
    images = write_coco(tmp_path / "src", n=4)
    path = tmp_path / "src" / "annotations.json"
    coco = json.loads(path.read_text())
    annotation = coco["annotations"][0]  # image 1's
    x, y, w, h = annotation.pop("bbox")
    annotation["segmentation"] = [[x, y, x + w, y, bad, y + h, x, y + h]]
    path.write_text(json.dumps(coco))  # (written as NaN, Infinity: read back as such)
    report = import_dataset(session, "coco", tmp_path / "src", "c", tmp_path / "ds")
    [out] = report.issues
    assert out.left_out and out.file == images[1].name
    assert out.reason == (
        f"annotation {annotation['id']}: a segmentation polygon has the coordinate {bad}, "
        "not a finite number"
    )


def test_a_voc_filename_naming_another_files_image_names_that_file_by_its_path(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An annotation file whose <filename> names the image of another was said to name "the
    image of part_003.xml", where that file is line2/part_003.xml: by its stem alone, one in a
    sub-folder of Annotations/ could not be told from one at the top."""
    src = tmp_path / "src"
    write_voc(src, n=8)
    text = (src / "annotations" / "part_003.xml").read_text()
    (src / "annotations" / "line2").mkdir()
    (src / "annotations" / "part_003.xml").rename(src / "annotations" / "line2" / "part_003.xml")
    (src / "annotations" / "moved.xml").write_text(text)  # (no image of its own name)
    report = import_dataset(session, "voc", src, "v", tmp_path / "ds", classes=CLASSES)
    assert [str(issue) for issue in report.issues] == [
        "moved.xml: no image of its own name, and its <filename> part_003.png names the image "
        "of line2/part_003.xml"
    ]


def test_a_coco_category_that_is_only_the_supercategory_of_others_is_no_class(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Roboflow's COCO export has a category named after the workspace (id 0), the
    supercategory of every other, with no annotation: it became an empty class 0, every
    real class one index on. It is now no class, said in a warning; a category that is its
    own supercategory (as COCO's `person`), or one annotated, stays a class."""
    images = write_coco(tmp_path / "src", n=8)
    path = tmp_path / "src" / "annotations.json"
    coco = json.loads(path.read_text())
    for category in coco["categories"]:
        category["supercategory"] = "acme-defects"
    coco["categories"].insert(0, {"id": 0, "name": "acme-defects", "supercategory": "none"})
    path.write_text(json.dumps(coco))
    report = import_dataset(session, "coco", tmp_path / "src", "c", tmp_path / "ds")
    assert report.classes == CLASSES
    assert yaml.safe_load((report.root / "data.yaml").read_text())["names"] == dict(
        enumerate(CLASSES)
    )
    [warning] = report.issues
    assert str(warning) == (
        "annotations.json: warning: category 'acme-defects' has no annotation and is only the "
        f"supercategory of {', '.join(CLASSES)}: not made a class"
    )
    defect = next(image for image in images if image.boxes)
    assert _label_lines(report.root)[Path(defect.name).stem] == _yolo_lines(defect)
    # Its own supercategory, or annotated: a class as before.
    for category in coco["categories"]:
        category["supercategory"] = category["name"]
    path.write_text(json.dumps(coco))
    report = import_dataset(session, "coco", tmp_path / "src", "d", tmp_path / "ds")
    assert report.classes == ["acme-defects", *CLASSES] and report.issues == []


def _roboflow_coco_export(root: Path, folders: dict[str, int]) -> dict[str, list[SyntheticImage]]:
    """Roboflow's COCO export: each split folder holds its images and `_annotations.coco.json`,
    whose category 0, named after the workspace, is the supercategory of every class."""
    made: dict[str, list[SyntheticImage]] = {}
    for seed, (folder, n) in enumerate(folders.items()):
        images = write_coco(root / folder, n=n, seed=seed)
        coco = json.loads((root / folder / "annotations.json").read_text())
        (root / folder / "annotations.json").unlink()
        for image, record in zip(images, coco["images"], strict=True):
            renamed = f"{Path(image.name).stem}_{folder}.png"  # (named apart, as Roboflow does)
            (root / folder / "images" / image.name).rename(root / folder / renamed)
            image.name = record["file_name"] = renamed
        (root / folder / "images").rmdir()
        for category in coco["categories"]:
            category["supercategory"] = "acme-defects"
        coco["categories"].insert(0, {"id": 0, "name": "acme-defects", "supercategory": "none"})
        (root / folder / "_annotations.coco.json").write_text(json.dumps(coco))
        made[folder] = images
    return made


def test_a_roboflow_coco_export_is_imported_in_its_own_splits(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Roboflow's COCO export (train/, valid/, test/, each with its images and its
    _annotations.coco.json) was refused: "must hold exactly one COCO .json file (found 0)"."""
    src = tmp_path / "src"
    made = _roboflow_coco_export(src, {"train": 8, "valid": 4, "test": 4})
    report = import_dataset(session, "coco", src, "rf", tmp_path / "ds")
    assert report.classes == CLASSES
    [warning] = report.issues  # (said once, not once a split)
    assert not warning.left_out and "'acme-defects' has no annotation" in warning.reason
    _own_splits_then_split_lists(session, tmp_path, report, "coco", src, made, "valid")
    # An issue names its file under its split folder.
    path = src / "valid" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["category_id"] = 9
    path.write_text(json.dumps(coco))
    report = import_dataset(session, "coco", src, "rf3", tmp_path / "ds")
    [out] = report.left_out
    assert out.file == f"valid/{made['valid'][1].name}" and "category id 9" in out.reason
    # Split files whose categories differ are refused, both named; so is a split folder
    # without its .json.
    coco["categories"][1]["name"] = "dent"
    path.write_text(json.dumps(coco))
    with pytest.raises(UserError) as refused:
        import_dataset(session, "coco", src, "rf4", tmp_path / "ds")
    assert str(refused.value) == (
        "the categories of test/_annotations.coco.json and valid/_annotations.coco.json differ "
        "(id 1: 'scratch' in test/_annotations.coco.json, 'dent' in "
        "valid/_annotations.coco.json): export every split with the same classes"
    )
    path.unlink()
    with pytest.raises(
        UserError, match=r"valid must hold exactly one COCO \.json file \(found 0\)"
    ):
        import_dataset(session, "coco", src, "rf5", tmp_path / "ds")


def _files_of(folder: Path) -> dict[str, bytes]:
    """Each file under `folder`, by its path there, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("trained_on", [False, True])
def test_a_replace_whose_commit_fails_leaves_the_old_dataset_whole(
    tmp_path: Path, trained_on: bool
) -> None:
    """`defects import --replace` removed the old data before the dataset's row was committed:
    a commit that failed (here a real SQLite trigger refusing the row, as a constraint or a
    locked database would) left the row describing the old data over the new folder, the old
    data gone. The old folder and row are now as they were, nothing beside them, and the same
    import runs whole once the database takes it."""
    import sqlite3

    from typer.testing import CliRunner

    from db.models import ModelKind, ModelVersion
    from db.session import session_scope
    from training.cli import app

    write_yolo(tmp_path / "old", n=6)
    write_yolo(tmp_path / "new", n=4, seed=1)
    args = ["import", "yolo", "--name", "y", "--classes", ",".join(CLASSES)]
    first = CliRunner().invoke(app, [*args[:2], str(tmp_path / "old"), *args[2:]])
    assert first.exit_code == 0, first.output
    data_dir = tmp_path / "data"
    database = data_dir / "defects.db"
    url = f"sqlite:///{database}"
    if trained_on:
        with session_scope(url) as session:
            version = ModelVersion(name="v1", kind=ModelKind.DETECTOR, architecture="yolo")
            version.file_path, version.sha256 = "v1.pt", "0" * 64
            version.dataset_id = session.query(Dataset).filter_by(name="y").one().id
            session.add(version)
    datasets_dir = data_dir / "datasets"
    old_files = _files_of(datasets_dir / "y")
    rows = "SELECT name, root_path, classes, split_counts FROM datasets ORDER BY id"
    with sqlite3.connect(database) as db:
        old_rows = db.execute(rows).fetchall()
        for event in ("INSERT", "UPDATE"):
            db.execute(
                f"CREATE TRIGGER refuse_{event} BEFORE {event} ON datasets WHEN NEW.name = 'y' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
    replace_args = [*args[:2], str(tmp_path / "new"), *args[2:], "--replace"]
    failed = CliRunner().invoke(app, replace_args)
    assert failed.exit_code != 0
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]
    assert _files_of(datasets_dir / "y") == old_files
    with sqlite3.connect(database) as db:
        assert db.execute(rows).fetchall() == old_rows
        db.execute("DROP TRIGGER refuse_INSERT")
        db.execute("DROP TRIGGER refuse_UPDATE")
    again = CliRunner().invoke(app, replace_args)
    assert again.exit_code == 0, again.output
    names = sorted(p.name for p in datasets_dir.iterdir())
    assert names == ["y", *[n for n in names if n.startswith("y-before-")]]  # (nothing beside)
    assert len(names) == 1 + trained_on
    assert len(list((datasets_dir / "y").glob("images/*/*.png"))) == 4


@pytest.mark.parametrize("failing_at", ["a file of the new copy", "the store's folder"])
@pytest.mark.parametrize("trained_on", [False, True])
def test_a_disk_failing_a_sync_after_the_folders_moved_leaves_the_old_dataset_whole(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_at: str, trained_on: bool
) -> None:  # type: ignore[no-untyped-def]
    """The disk fails (EIO) at the system's fsync once an import moved folders: the new copy's
    files synced after the replaced data was moved aside for the model versions trained on it,
    or the store's folder synced after the new copy took the dataset's name. Each folder is
    renamed back: the old dataset's files, data.yaml included, and its row are as they were,
    and nothing is left beside it."""
    import errno

    from db.models import ModelKind, ModelVersion

    write_yolo(tmp_path / "old", n=6)
    write_yolo(tmp_path / "new", n=4, seed=1)
    datasets_dir = tmp_path / "ds"
    import_dataset(session, "yolo", tmp_path / "old", "y", datasets_dir, classes=CLASSES)
    if trained_on:
        version = ModelVersion(name="v1", kind=ModelKind.DETECTOR, architecture="yolo")
        version.file_path, version.sha256 = "v1.pt", "0" * 64
        version.dataset_id = session.query(Dataset).filter_by(name="y").one().id
        session.add(version)
    session.commit()
    old_files = _files_of(datasets_dir / "y")
    stages = str((datasets_dir / ".y.importing-").resolve())
    failing = stages if failing_at.startswith("a file") else str(datasets_dir.resolve())
    fsync, failed = os.fsync, []

    def failing_disk(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path == failing or (
            failing == stages and path.startswith(stages) and "/images/" in path
        ):
            failed.append(path)
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    monkeypatch.setattr(os, "fsync", failing_disk)
    with pytest.raises(UserError, match="nothing is registered and dataset y is as it was"):
        import_dataset(
            session, "yolo", tmp_path / "new", "y", datasets_dir, classes=CLASSES, replace=True
        )
    session.rollback()  # (as `defects import` does on an error)
    assert failed
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]
    assert _files_of(datasets_dir / "y") == old_files
    row = session.query(Dataset).filter_by(name="y").one()
    assert Path(row.root_path) == (datasets_dir / "y").resolve()
    assert session.query(Dataset).count() == 1


def test_a_ctrl_c_while_the_replaced_data_is_removed_says_interrupted(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c_raises: None
) -> None:
    """A Ctrl-C while a committed import removes the data it replaced ends the command as a
    Ctrl-C ("interrupted"): removed inside the commit's own hook, the rollback after the
    Ctrl-C was refused by the session (a traceback, "in 'committed' state"). The new data is
    the dataset, and the next import removes what is left of the old."""
    import signal

    from db.session import session_scope

    write_yolo(tmp_path / "old", n=6)
    write_yolo(tmp_path / "new", n=4, seed=1)
    datasets_dir = tmp_path / "ds"
    with session_scope(database_url) as session:
        import_dataset(session, "yolo", tmp_path / "old", "y", datasets_dir, classes=CLASSES)
    unlink, stops = os.unlink, []

    def stopped_by_ctrl_c(path: str, *, dir_fd: int | None = None) -> None:
        where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else str(path)
        if ".y.removed-" in where and not stops:
            stops.append(where)
            os.kill(os.getpid(), signal.SIGINT)
        unlink(path, dir_fd=dir_fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    monkeypatch.setattr(os, "unlink", stopped_by_ctrl_c)
    with pytest.raises(KeyboardInterrupt), session_scope(database_url) as session:
        import_dataset(
            session, "yolo", tmp_path / "new", "y", datasets_dir, classes=CLASSES, replace=True
        )
    assert stops
    assert len(list((datasets_dir / "y").glob("images/*/*.png"))) == 4
    with session_scope(database_url) as session:
        row = session.query(Dataset).filter_by(name="y").one()
        assert sum(c["images"] for c in row.split_counts.values()) == 4
    monkeypatch.undo()
    with session_scope(database_url) as session:
        import_dataset(
            session, "yolo", tmp_path / "new", "y", datasets_dir, classes=CLASSES, replace=True
        )
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]


def test_a_ctrl_c_during_an_imports_copy_leaves_no_half_copy(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c_raises: None
) -> None:  # type: ignore[no-untyped-def]
    """A Ctrl-C while an import copied its images left its half-written copy (.y.importing)
    beside the datasets, holding the disk's space until an import of the same name came; a
    failed copy's was removed. It is removed now too, and the old dataset is as it was."""
    import signal

    write_yolo(tmp_path / "old", n=6)
    write_yolo(tmp_path / "new", n=6, seed=1)
    datasets_dir = tmp_path / "ds"
    import_dataset(session, "yolo", tmp_path / "old", "y", datasets_dir, classes=CLASSES)
    session.commit()
    old_files = _files_of(datasets_dir / "y")
    link, linked = os.link, []

    def stopped_by_ctrl_c(source: str, target: str, *args: object, **kwargs: object) -> None:
        linked.append(target)
        if len(linked) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        link(source, target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", stopped_by_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        import_dataset(
            session, "yolo", tmp_path / "new", "y", datasets_dir, classes=CLASSES, replace=True
        )
    session.rollback()  # (as `defects import` does on a Ctrl-C)
    assert "/.y.importing-" in str(linked[-1])
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]
    assert _files_of(datasets_dir / "y") == old_files


def _second_read_before_the_first_registered(
    tmp_path: Path, database_url: str, datasets_dir: Path
) -> tuple[list[str], list, list]:
    """Two imports of one new name y: the second's data read (as it reads it before looking
    at the store: no dataset y yet), then the first imported and registered. The second's
    read data, for `write_dataset`."""
    from db.session import session_scope
    from training.datasets import read_yolo

    write_yolo(tmp_path / "first", n=6)
    write_yolo(tmp_path / "second", n=4, seed=1)
    read = read_yolo(tmp_path / "second", CLASSES)
    with session_scope(database_url) as session:
        import_dataset(session, "yolo", tmp_path / "first", "y", datasets_dir, classes=CLASSES)
    return read


def test_an_import_that_another_of_the_same_name_overtook_says_so_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    """Two imports of one new name at once: the second to register its row was refused by
    the database's unique name, a traceback of the driver's IntegrityError. It now says in
    one line that nothing is registered and to import again with --replace; the first
    import's data is the dataset, nothing beside it."""
    from db.session import session_scope

    datasets_dir = tmp_path / "ds"
    class_names, images, issues = _second_read_before_the_first_registered(
        tmp_path, database_url, datasets_dir
    )
    first_files = _files_of(datasets_dir / "y")
    with pytest.raises(UserError) as refused, session_scope(database_url) as session:
        write_dataset(session, "y", "second", "yolo", class_names, images, issues, datasets_dir)
    said = str(refused.value)
    assert said.startswith("dataset y not written: the database refused its row (")
    assert "run the same command again with --replace" in said
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]
    assert _files_of(datasets_dir / "y") == first_files
    with session_scope(database_url) as session:
        assert session.query(Dataset).filter_by(name="y").one().source.endswith("first")


_PAUSED_IMPORT = """
import os, sys, time
from pathlib import Path

from db.session import session_scope
from inspection.errors import UserError
from tests.synthetic import CLASSES
from training.datasets import import_dataset

url, src, datasets_dir, ready, go = sys.argv[1:]
link = os.link


def paused(source, target, *args, **kwargs):
    # (Paused with its copy half built, until the test says go.)
    if not Path(ready).exists():
        Path(ready).write_text(str(target))
        while not Path(go).exists():
            time.sleep(0.02)
    link(source, target, *args, **kwargs)


os.link = paused
try:
    with session_scope(url) as session:
        import_dataset(session, "yolo", Path(src), "y", Path(datasets_dir), classes=CLASSES)
except UserError as exc:
    print(exc)
    sys.exit(1)
"""


def test_two_imports_of_one_name_at_once_each_keep_their_own_copy(
    database_url: str, tmp_path: Path
) -> None:
    """Two imports of one name at once shared one `.y.importing`: the second deleted the first's
    half-built copy, and both failed ("Directory not empty", "No such file"). Each builds its
    own now; the first is refused by the database's unique name alone, in its own words.
    Leftovers whose process is gone on this machine are removed, a live import's are not."""
    import socket
    import subprocess
    import sys
    import time

    from db.session import session_scope

    write_yolo(tmp_path / "first", n=6)
    write_yolo(tmp_path / "second", n=4, seed=1)
    datasets_dir = tmp_path / "ds"
    datasets_dir.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = datasets_dir / f".y.importing-{socket.gethostname()}-{gone.stdout.strip()}-0badcafe"
    (dead / "images").mkdir(parents=True)
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PAUSED_IMPORT,
            database_url,
            str(tmp_path / "first"),
            str(datasets_dir),
            str(ready),
            str(go),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), first.communicate()[0]
        first_stage = Path(ready.read_text()).parents[2]
        assert first_stage.parent == datasets_dir
        with session_scope(database_url) as session:
            import_dataset(session, "yolo", tmp_path / "second", "y", datasets_dir, classes=CLASSES)
        assert first_stage.is_dir() and not dead.exists()
    finally:
        go.touch()
        said = first.communicate(timeout=60)[0]
    assert first.returncode == 1, said
    assert said.startswith("dataset y not written: the database refused its row ("), said
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]
    assert len(list((datasets_dir / "y").glob("images/*/*.png"))) == 4


_REPLACING_IMPORT = """
import sys, time
from pathlib import Path

import training.datasets as datasets
from db.session import session_scope
from inspection.errors import UserError
from tests.synthetic import CLASSES

url, src, datasets_dir, ready, go, outcome = sys.argv[1:]
sync_names = datasets._sync_names


def paused(folder):
    # (Paused with its folders moved and its row not yet committed, until the test says go.)
    if ready != "-" and not Path(ready).exists():
        Path(ready).touch()
        while not Path(go).exists():
            time.sleep(0.02)
    sync_names(folder)


datasets._sync_names = paused
try:
    with session_scope(url) as session:
        datasets.import_dataset(
            session, "yolo", Path(src), "y", Path(datasets_dir), classes=CLASSES, replace=True
        )
        if outcome == "refused":
            raise UserError("refused at its commit")
except UserError as exc:
    print(exc)
    sys.exit(1)
"""


def _replacing_import(  # type: ignore[no-untyped-def]
    url: str, src: Path, datasets_dir: Path, ready: str, go: str, out: Path, outcome: str
):
    """A `--replace` import of y in a process of its own, its output in `out`."""
    import subprocess
    import sys

    with out.open("w") as said:
        return subprocess.Popen(
            [sys.executable, "-c", _REPLACING_IMPORT, url, str(src), str(datasets_dir), ready, go]
            + [outcome],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=said,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.mark.parametrize("outcome", ["refused", "committed"])
def test_two_replacing_imports_of_one_name_at_once_leave_the_row_and_folder_agreeing(
    database_url: str, tmp_path: Path, outcome: str
) -> None:
    """Two `--replace` imports of one name at once shared `.y.replaced`: the second deleted the
    old data the first had set aside, and the first's rollback then moved the second's new copy
    away and its own into y, the row saying the second's 4 images over the first's 6 (or, the
    first committed, the first's 6 over the second's 4). The second now waits, saying so,
    until the first's commit or rollback is done, then replaces y."""
    import time

    from db.session import session_scope

    write_yolo(tmp_path / "old", n=3, seed=2)
    write_yolo(tmp_path / "first", n=6)
    write_yolo(tmp_path / "second", n=4, seed=1)
    datasets_dir = tmp_path / "ds"
    with session_scope(database_url) as session:
        import_dataset(session, "yolo", tmp_path / "old", "y", datasets_dir, classes=CLASSES)
    ready, go = tmp_path / "ready", tmp_path / "go"
    first_out, second_out = tmp_path / "first.out", tmp_path / "second.out"
    first = _replacing_import(
        database_url, tmp_path / "first", datasets_dir, str(ready), str(go), first_out, outcome
    )
    second = None
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), first_out.read_text()
        second = _replacing_import(
            database_url, tmp_path / "second", datasets_dir, "-", "-", second_out, "committed"
        )
        deadline = time.monotonic() + 60
        while (
            "waiting for the other import of dataset y" not in second_out.read_text()
            and second.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
    finally:
        go.touch()
        first.wait(timeout=60)
        if second is not None:
            second.wait(timeout=60)
    assert second is not None
    assert first.returncode == (1 if outcome == "refused" else 0), first_out.read_text()
    assert ("refused at its commit" in first_out.read_text()) == (outcome == "refused")
    assert second.returncode == 0, second_out.read_text()
    with session_scope(database_url) as session:
        row = session.scalars(select(Dataset).where(Dataset.name == "y")).one()
        counts = {split: n["images"] for split, n in row.split_counts.items()}
        assert Path(row.root_path) == (datasets_dir / "y").resolve()
    on_disk = {
        split: len(list((datasets_dir / "y" / "images" / split).glob("*"))) for split in counts
    }
    assert counts == on_disk and sum(on_disk.values()) == 4
    assert second_out.read_text() == "waiting for the other import of dataset y to finish ...\n"
    assert sorted(p.name for p in datasets_dir.iterdir()) == ["y"]


@pytest.mark.parametrize("failing", ["the new copy's move", "the old data's move"])
def test_folders_a_rollback_cannot_put_back_are_said_in_the_error(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """An import refused at the end had its folders moved back by the rollback; where a move
    failed, that was only logged, and the error said the dataset's folder was left as it was
    while the new copy sat in its place and the old data aside. The error says so now, with
    where each folder is."""
    import errno

    from db.session import session_scope

    datasets_dir = tmp_path / "ds"
    class_names, images, issues = _second_read_before_the_first_registered(
        tmp_path, database_url, datasets_dir
    )
    rename, refused = os.rename, []

    def failing_disk(source: str, target: str, *args: object, **kwargs: object) -> None:
        back = (
            Path(target).name.startswith(".y.importing-")
            if failing == "the new copy's move"
            else Path(source).name == ".y.replaced"
        )
        if back and (failing == "the new copy's move" or Path(target).name == "y"):
            refused.append(target)
            raise OSError(errno.EIO, "Input/output error", str(source))
        rename(source, target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing_disk)
    with pytest.raises(UserError) as failed, session_scope(database_url) as session:
        write_dataset(session, "y", "second", "yolo", class_names, images, issues, datasets_dir)
    said = str(failed.value)
    assert refused
    assert said.startswith("dataset y not written, and its folders could not be put back")
    new_copy_back = f"{datasets_dir / 'y'} was {datasets_dir / '.y.importing-'}"
    assert (new_copy_back in said) == (failing == "the new copy's move")
    assert f"{datasets_dir / '.y.replaced'} was {datasets_dir / 'y'}" in said
    if failing == "the old data's move":  # (the new copy removed, the old data left aside)
        assert sorted(p.name for p in datasets_dir.iterdir()) == [".y.replaced"]
    assert "the database refused its row" in said


def test_old_data_a_failed_put_back_left_aside_is_not_deleted_by_a_later_import(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback that could not move `.y.replaced` back left it the only copy of y's data, and
    its error said to put it back by hand; a later `defects import --replace` of y deleted it
    (once committed, as data it had replaced). It is refused now, in one line naming the
    folder, which stays as it was."""
    import errno
    import subprocess
    import sys

    from db.session import session_scope

    write_yolo(tmp_path / "old", n=6)
    write_yolo(tmp_path / "new", n=4, seed=1)
    datasets_dir = tmp_path / "data" / "datasets"
    with session_scope(database_url) as session:
        import_dataset(session, "yolo", tmp_path / "old", "y", datasets_dir, classes=CLASSES)
    rename = os.rename

    def failing_disk(source: str, target: str, *args: object, **kwargs: object) -> None:
        if Path(source).name == ".y.replaced" and Path(target).name == "y":
            raise OSError(errno.EIO, "Input/output error", str(source))
        rename(source, target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing_disk)
    with (
        pytest.raises(UserError, match="could not be put back"),
        session_scope(database_url) as session,
    ):
        import_dataset(
            session, "yolo", tmp_path / "new", "y", datasets_dir, classes=CLASSES, replace=True
        )
        raise UserError("refused at its commit")
    monkeypatch.undo()
    aside = datasets_dir / ".y.replaced"
    assert len(list(aside.glob("images/*/*.png"))) == 6
    env = {**os.environ, "DEFECTS_DATA_DIR": str(tmp_path / "data")}
    env["DEFECTS_DATABASE_URL"] = database_url
    later = subprocess.run(
        [sys.executable, "-m", "training.cli", "import", "yolo", str(tmp_path / "new")]
        + ["--name", "y", "--replace", "--classes", ",".join(CLASSES)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert later.returncode == 1, later.stdout + later.stderr
    said = later.stderr.strip()
    assert "\n" not in said and f"{aside} holds data an earlier import of y" in said, said
    assert len(list(aside.glob("images/*/*.png"))) == 6
    # (Beside it, only the new copy the failed put-back left, of this live process's import.)
    left = sorted(p.name for p in datasets_dir.iterdir())
    assert left[1:] == [".y.replaced"] and f"-{os.getpid()}-" in left[0], left
    with session_scope(database_url) as session:
        row = session.scalars(select(Dataset).where(Dataset.name == "y")).one()
        assert sum(n["images"] for n in row.split_counts.values()) == 6

"""Bring labeled defect images (Pascal VOC, YOLO or COCO) into the product's YOLO layout.

Layout of an imported dataset `<data>/datasets/<name>/`:
  images/{train,val,test}/<file>, labels/{train,val,test}/<stem>.txt (empty for a good part),
  splits/{train,val,test}.txt, data.yaml (for ultralytics), import_report.txt.
Parts with no defect are first class: an image without boxes is a good part, kept with an empty
label file. An image whose annotation is wrong is left out and listed in the report with the
reason; training on it would teach the model that its defect is background.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from PIL import Image, UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Dataset
from inspection.errors import UserError
from inspection.images import IMAGE_SUFFIXES

SourceFormat = Literal["voc", "yolo", "coco"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Box:
    class_index: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class LabeledImage:
    path: Path
    width: int
    height: int
    boxes: list[Box]
    split: str | None = None


@dataclass(frozen=True)
class ImportIssue:
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class ImportReport:
    name: str
    root: Path
    classes: list[str]
    split_counts: dict[str, dict[str, int]]
    issues: list[ImportIssue] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(c["images"] for c in self.split_counts.values())


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height of a readable image; raises ValueError with the reason otherwise."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
        return size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"unreadable image ({exc.__class__.__name__}: {exc})") from exc


def _check_box(box: Box, width: int, height: int, n_classes: int) -> str | None:
    if not 0 <= box.class_index < n_classes:
        return f"unknown class index {box.class_index}"
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        return f"empty box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g})"
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        return (
            f"box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) outside the "
            f"{width}x{height} image"
        )
    return None


def _find_dir(src: Path, *names: str) -> Path:
    for name in names:
        for candidate in (src / name, src / name.lower(), src / name.capitalize()):
            if candidate.is_dir():
                return candidate
    raise UserError(f"{src} has no {' or '.join(names)} folder")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


# --- readers: each returns (class names, labeled images, issues) --------------------------------


def read_voc(
    src: Path, classes: list[str] | None
) -> tuple[list[str], list[LabeledImage], list[ImportIssue]]:
    annotations = _find_dir(src, "annotations", "Annotations")
    images_dir = _find_dir(src, "images", "JPEGImages")
    by_stem: dict[str, Path] = {}
    issues: list[ImportIssue] = []
    for path in _images_in(images_dir):
        kept = by_stem.setdefault(path.stem, path)
        if kept != path:  # (an annotation names its image by stem: only one can be meant)
            issues.append(
                ImportIssue(
                    str(path.relative_to(images_dir)),
                    f"same name as {kept.relative_to(images_dir)}, which is used instead",
                )
            )
    parsed: list[tuple[Path, Path, list[tuple[str, float, float, float, float]]]] = []
    failed_stems: set[str] = set()  # their images must not pass for good parts
    for xml_path in sorted(annotations.glob("*.xml")):
        try:
            root = ET.parse(xml_path).getroot()
            filename = (root.findtext("filename") or "").strip()
            objects = []
            for obj in root.iter("object"):
                name = (obj.findtext("name") or "").strip()
                bndbox = obj.find("bndbox")
                if bndbox is None or not name:
                    raise ValueError("object without a name or bndbox")
                coords = [
                    float(bndbox.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")
                ]
                if any(c != c for c in coords):  # NaN: a missing coordinate
                    raise ValueError("bndbox with a missing coordinate")
                objects.append((name, *coords))
        except (ET.ParseError, ValueError) as exc:
            issues.append(ImportIssue(xml_path.name, f"unreadable annotation: {exc}"))
            failed_stems.add(xml_path.stem)
            continue
        image_path = images_dir / filename if filename else None
        if image_path is None or not image_path.is_file():
            image_path = by_stem.get(Path(filename).stem if filename else xml_path.stem)
        if image_path is None:
            image_path = by_stem.get(xml_path.stem)
        if image_path is None:
            issues.append(
                ImportIssue(xml_path.name, f"image {filename or xml_path.stem} not found")
            )
            continue
        parsed.append((xml_path, image_path, objects))  # type: ignore[arg-type]
    found_names = sorted({o[0] for _, _, objects in parsed for o in objects})
    class_names = classes or found_names
    index = {name: i for i, name in enumerate(class_names)}
    images: list[LabeledImage] = []
    annotated = {image_path for _, image_path, _ in parsed}
    for xml_path, image_path, objects in parsed:
        unknown = sorted({o[0] for o in objects if o[0] not in index})
        if unknown:
            issues.append(ImportIssue(xml_path.name, f"unknown class {', '.join(unknown)}"))
            continue
        boxes = [Box(index[n], x1, y1, x2, y2) for n, x1, y1, x2, y2 in objects]
        images.append(LabeledImage(image_path, 0, 0, boxes))
    # Images with no annotation file are good parts.
    images += [
        LabeledImage(p, 0, 0, [])
        for stem, p in by_stem.items()
        if p not in annotated and stem not in failed_stems
    ]
    return class_names, images, issues


def _yolo_class_names(src: Path) -> list[str]:
    for name in ("data.yaml", "dataset.yaml"):
        if (src / name).is_file():
            names = yaml.safe_load((src / name).read_text()).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    if (src / "classes.txt").is_file():
        return [
            line.strip() for line in (src / "classes.txt").read_text().splitlines() if line.strip()
        ]
    raise UserError(f"{src} has no data.yaml (with names) or classes.txt")


def read_yolo(
    src: Path, classes: list[str] | None
) -> tuple[list[str], list[LabeledImage], list[ImportIssue]]:
    class_names = classes or _yolo_class_names(src)
    images_dir = _find_dir(src, "images")
    labels_dir = _find_dir(src, "labels")
    issues: list[ImportIssue] = []
    images: list[LabeledImage] = []
    for image_path in _images_in(images_dir):
        relative = image_path.relative_to(images_dir)
        label_path = labels_dir / relative.with_suffix(".txt")
        split = (
            relative.parts[0] if len(relative.parts) > 1 and relative.parts[0] in SPLITS else None
        )
        boxes: list[Box] = []
        if label_path.is_file():
            try:
                width, height = _image_size(image_path)
            except ValueError as exc:
                issues.append(ImportIssue(str(relative), str(exc)))
                continue
            try:
                for line in label_path.read_text().splitlines():
                    if not line.strip():
                        continue
                    c, xc, yc, w, h = line.split()[:5]
                    cx, cy, bw, bh = (float(v) for v in (xc, yc, w, h))
                    boxes.append(
                        Box(
                            int(c),
                            (cx - bw / 2) * width,
                            (cy - bh / 2) * height,
                            (cx + bw / 2) * width,
                            (cy + bh / 2) * height,
                        )
                    )
            except (ValueError, UnicodeDecodeError) as exc:
                issues.append(
                    ImportIssue(str(label_path.relative_to(src)), f"unreadable label: {exc}")
                )
                continue
        images.append(LabeledImage(image_path, 0, 0, boxes, split))
    return class_names, images, issues


def read_coco(
    src: Path, classes: list[str] | None
) -> tuple[list[str], list[LabeledImage], list[ImportIssue]]:
    json_path = src if src.is_file() else None
    if json_path is None:
        candidates = sorted(src.glob("*.json")) + sorted(src.glob("annotations/*.json"))
        if len(candidates) != 1:
            raise UserError(
                f"{src} must hold exactly one COCO .json file (found {len(candidates)})"
            )
        json_path = candidates[0]
    try:
        coco = json.loads(json_path.read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        records = coco["images"]
        annotations = coco.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"unreadable COCO file {json_path}: {exc}") from exc
    try:
        class_names = classes or [str(c["name"]) for c in categories]
        index_of_category = {
            c["id"]: (class_names.index(c["name"]) if c["name"] in class_names else -1)
            for c in categories
        }
    except (KeyError, TypeError) as exc:
        raise UserError(f"unreadable COCO categories in {json_path}: missing {exc}") from exc
    base = json_path.parent
    roots = [base, base / "images", base.parent / "images", base.parent]
    by_image: dict[object, list[Box]] = {}
    # An image whose annotation cannot be read is left out, never imported without that box:
    # it would count as a good part and teach the model that its defect is background.
    unreadable: dict[object, str] = {}
    issues: list[ImportIssue] = []
    for ann in annotations:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        try:
            if not isinstance(ann, dict):
                raise TypeError(f"not an object: {ann!r}"[:80])
            if "bbox" not in ann:
                raise KeyError("bbox")
            x, y, w, h = (float(v) for v in ann["bbox"])
            category = index_of_category.get(ann["category_id"], -1)
            by_image.setdefault(image_id, []).append(Box(category, x, y, x + w, y + h))
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"annotation {ann.get('id', '?') if isinstance(ann, dict) else '?'}: " + (
                f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            )
            if image_id is None:
                issues.append(ImportIssue(json_path.name, reason))
            else:
                unreadable.setdefault(image_id, reason)
    images: list[LabeledImage] = []
    known_ids = set()
    for record in records:
        if not isinstance(record, dict) or "id" not in record:
            issues.append(
                ImportIssue(json_path.name, f"image record without an id: {record!r}"[:120])
            )
            continue
        known_ids.add(record["id"])
        file_name = str(record.get("file_name", ""))
        if record["id"] in unreadable:
            issues.append(ImportIssue(file_name or str(record["id"]), unreadable[record["id"]]))
            continue
        path = next((r / file_name for r in roots if (r / file_name).is_file()), None)
        if path is None:
            issues.append(ImportIssue(file_name or str(record.get("id")), "image file not found"))
            continue
        images.append(LabeledImage(path, 0, 0, by_image.get(record["id"], [])))
    for image_id in sorted(set(by_image) - known_ids, key=str):
        issues.append(
            ImportIssue(json_path.name, f"annotations of image {image_id}, which is not listed")
        )
    return class_names, images, issues


READERS = {"voc": read_voc, "yolo": read_yolo, "coco": read_coco}


# --- import -------------------------------------------------------------------------------------


def _read_split_lists(splits_dir: Path) -> dict[str, str]:
    split_of: dict[str, str] = {}
    for split in SPLITS:
        path = splits_dir / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"split list {path} not found (need train.txt, val.txt and test.txt)")
        for line in path.read_text().splitlines():
            name = Path(line.strip()).name
            if name and split_of.setdefault(name, split) != split:
                # A part in two splits leaks what the model learned into what measures it.
                raise UserError(
                    f"{name} is listed in both {split_of[name]}.txt and {split}.txt: "
                    "each image belongs to one split"
                )
    return split_of


def _hash_split(name: str) -> str:
    """A stable 80/10/10 split by file name, used when no split lists are given."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # no second copy of the images where the file system allows it
    except OSError:
        shutil.copy2(source, target)


def _yolo_line(box: Box, width: int, height: int) -> str:
    cx = (box.x1 + box.x2) / 2 / width
    cy = (box.y1 + box.y2) / 2 / height
    return f"{box.class_index} {cx:.6f} {cy:.6f} {(box.x2 - box.x1) / width:.6f} {(box.y2 - box.y1) / height:.6f}"


def import_dataset(
    session: Session,
    source_format: SourceFormat,
    src: Path,
    name: str,
    datasets_dir: Path,
    splits_dir: Path | None = None,
    classes: list[str] | None = None,
    replace: bool = False,
) -> ImportReport:
    """Convert, check and register a labeled dataset; returns what was imported and what was not."""
    if source_format not in READERS:
        raise UserError(f"unknown format {source_format!r}; choose voc, yolo or coco")
    if not src.exists():
        raise UserError(f"source not found: {src}")
    check_dataset_name(name)
    existing = session.scalars(select(Dataset).where(Dataset.name == name)).first()
    if existing is not None and not replace:
        raise UserError(f"dataset {name!r} already exists (use --replace to import it again)")
    class_names, images, issues = READERS[source_format](src, classes)
    split_of = _read_split_lists(splits_dir) if splits_dir else None
    return write_dataset(
        session,
        name,
        str(src),
        source_format,
        class_names,
        images,
        issues,
        datasets_dir,
        split_of,
        existing,
    )


MAX_NAME = 100


def check_dataset_name(name: str) -> None:
    """A dataset's name is its folder in the store: one plain folder name, so that no name can
    reach outside the store or stand for the store itself. (".." once passed the old check of
    its characters alone, and importing under it deleted the whole data folder.)"""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UserError(f"dataset name {name!r} may hold only letters, digits, '-', '_' and '.'")
    if name.startswith("."):
        raise UserError(f"dataset name {name!r} may not start with '.'")
    if len(name) > MAX_NAME:
        raise UserError(f"dataset name is {len(name)} characters long; at most {MAX_NAME}")


def write_dataset(
    session: Session,
    name: str,
    source: str,
    source_format: str,
    class_names: list[str],
    images: list[LabeledImage],
    issues: list[ImportIssue],
    datasets_dir: Path,
    split_of: dict[str, str] | None = None,
    existing: Dataset | None = None,
) -> ImportReport:
    """Check labeled images, lay them out for training and register the dataset."""
    src = source
    check_dataset_name(name)
    root = datasets_dir / name
    if not class_names:
        raise UserError(f"no classes found in {src}")
    accepted: list[LabeledImage] = []
    seen: set[str] = set()
    for image in images:
        label = image.path.name
        if label in seen:
            issues.append(ImportIssue(label, "duplicate file name; only the first is kept"))
            continue
        try:
            image.width, image.height = _image_size(image.path)
        except ValueError as exc:
            issues.append(ImportIssue(label, str(exc)))
            continue
        problems = [
            p
            for b in image.boxes
            if (p := _check_box(b, image.width, image.height, len(class_names)))
        ]
        if problems:
            issues.append(ImportIssue(label, "; ".join(problems)))
            continue
        if split_of is not None:
            image.split = split_of.get(label)
            if image.split is None:
                issues.append(ImportIssue(label, "not listed in any split file"))
                continue
        image.split = image.split or _hash_split(label)
        seen.add(label)
        accepted.append(image)
    if split_of is not None:
        missing = sorted(set(split_of) - {i.path.name for i in images})
        issues += [ImportIssue(m, "listed in a split file but not in the source") for m in missing]
    if not accepted:
        raise UserError(f"no usable images in {src} ({len(issues)} problems, e.g. {issues[:1]})")

    if root.resolve().parent != datasets_dir.resolve():
        raise UserError(f"dataset name {name!r} does not name a folder of the dataset store")
    # Written beside the store's folder first, then put in its place: an import that fails
    # half way (a full disk, a bad file) leaves the dataset as it was, and one that replaces a
    # dataset from that dataset's own folder still finds its images (deleting the old folder
    # first once lost them both).
    stage = datasets_dir / f".{name}.importing"
    if stage.exists():
        shutil.rmtree(stage)
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    for image in accepted:
        assert image.split is not None
        _place(image.path, stage / "images" / image.split / image.path.name)
        label_file = stage / "labels" / image.split / f"{image.path.stem}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text(
            "".join(_yolo_line(b, image.width, image.height) + "\n" for b in image.boxes)
        )
        lists[image.split].append(image.path.name)
        counts[image.split].update(images=1, boxes=len(image.boxes), good=int(not image.boxes))
    (stage / "splits").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (stage / "splits" / f"{split}.txt").write_text(
            "".join(f"{n}\n" for n in sorted(lists[split]))
        )
    data_yaml = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(class_names)),
    }
    (stage / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False))
    (stage / "import_report.txt").write_text(
        f"source: {src}\nformat: {source_format}\nimported: {len(accepted)} images\n"
        f"left out: {len(issues)}\n" + "".join(f"{issue}\n" for issue in issues)
    )
    if root.exists():
        replaced = datasets_dir / f".{name}.replaced"
        if replaced.exists():
            shutil.rmtree(replaced)
        root.rename(replaced)
        stage.rename(root)
        shutil.rmtree(replaced)
    else:
        stage.rename(root)
    split_counts = {s: {k: int(counts[s][k]) for k in ("images", "boxes", "good")} for s in SPLITS}
    dataset = existing or Dataset(name=name)
    dataset.source = src
    dataset.source_format = source_format
    dataset.root_path = str(root.resolve())
    dataset.classes = class_names
    dataset.split_counts = split_counts
    session.add(dataset)
    session.flush()
    return ImportReport(name, root, class_names, split_counts, issues)


def check_trainable(dataset: Dataset) -> None:
    """Training needs images in train and val: said before a model is built, not as an
    ultralytics traceback after (a dataset for calibration or evaluation alone is fine)."""
    images = {s: int(((dataset.split_counts or {}).get(s) or {}).get("images", 0)) for s in SPLITS}
    empty = [s for s in ("train", "val") if not images[s]]
    if empty:
        found = ", ".join(f"{s} {n}" for s, n in images.items())
        raise UserError(
            f"dataset {dataset.name!r} has no {' and no '.join(empty)} images to train on "
            f"({found}): import it again with split lists that name its images"
        )
    if not int(((dataset.split_counts or {}).get("train") or {}).get("boxes", 0)):
        raise UserError(
            f"dataset {dataset.name!r} has no labeled defect in its train split: a model has "
            "nothing to learn from good parts alone (they serve calibration and evaluation)"
        )


def dataset_yaml(session: Session, name: str) -> tuple[Dataset, Path]:
    """The registered dataset and its ultralytics data.yaml."""
    dataset = session.scalars(select(Dataset).where(Dataset.name == name)).first()
    if dataset is None:
        raise UserError(
            f"no dataset {name!r}; import one with `defects import voc|yolo|coco SRC --name {name}`"
        )
    path = Path(dataset.root_path) / "data.yaml"
    if not path.is_file():
        raise UserError(f"dataset {name!r} is registered but its files are gone ({path})")
    return dataset, path


def split_image_paths(root: Path, split: str) -> list[Path]:
    """The images of one split of an imported dataset, in a stable order."""
    folder = root / "images" / split
    if not folder.is_dir():
        raise UserError(f"the dataset has no {split} split ({folder})")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

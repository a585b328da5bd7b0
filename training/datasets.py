"""Bring labeled defect images (Pascal VOC, YOLO, COCO or DeepPCB's layout) into the product's YOLO layout.

Layout of an imported dataset `<data>/datasets/<name>/`:
  images/{train,val,test}/<file> (one of more than 8 bits as the 8-bit <stem>.png stations
  decode), labels/{train,val,test}/<stem>.txt (empty for a good part),
  splits/{train,val,test}.txt, data.yaml (for ultralytics), import_report.txt.
A tiled dataset (`--tile`) holds tiles instead of whole images, `<stem>__x<X>_y<Y>.png` (the
part's stem and the tile's offset in it), its grid under `defects_tile` in data.yaml and
tiles.csv, which names each tile's part, offset and split and whether the part is defective.
Parts with no defect are first class: an image without boxes is a good part, kept with an empty
label file. An image whose annotation is wrong is left out and listed in the report with the
reason; training on it would teach the model that its defect is background.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PureWindowsPath
from typing import IO, Literal

import yaml
from PIL import Image, UnidentifiedImageError
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from db.models import Dataset, ModelVersion
from db.registry import class_key, look_alike_classes, singular_or_plural
from db.session import ROLLBACK_FAILURES
from inspection.errors import UserError
from inspection.images import (
    IMAGE_SUFFIXES,
    RUN_BY_ANOTHER_PROGRAM,
    TURNING_ORIENTATIONS,
    ImageDecodeError,
    allow_pixels_up_to,
    decode_image,
    exif_orientation,
    file_kind,
    max_pixels,
    not_a_file_reason,
    read_only_mount,
    replace_synced,
    several_frames_reason,
    sync_file,
    sync_folder,
    write_advice,
)
from inspection.settings import get_settings, same_place_under
from inspection.tiling import TileSpec, judged_in, tile_grid

SourceFormat = Literal["voc", "yolo", "coco", "deeppcb"]
SPLITS = ("train", "val", "test")
logger = logging.getLogger(__name__)


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
    # Pillow's mode, where the reader read the image's header already (with width and height):
    # the import checks each image once.
    mode: str | None = None
    # True where the boxes are on the pixels as stations decode them, turned by the image's
    # EXIF orientation (a reviewed part's); an annotation tool's may be on either (below).
    boxes_as_judged: bool = False
    # The image's size as its annotation gives it (VOC's <size>, COCO's width and height),
    # where it gives one: boxes drawn on a copy of another size would land elsewhere here.
    annotated_size: tuple[int, int] | None = None
    # A reviewed part's (an export of reviews): its id and the name it was recorded under, the
    # camera's file, which the stored copy's content-hash name loses (PART_MAP).
    part_id: int | None = None
    original_name: str | None = None


@dataclass(frozen=True)
class ImportIssue:
    file: str
    reason: str
    # False for a warning about a file that was imported all the same (a class name that looks
    # like a typo of another, an image converted to 8 bits).
    left_out: bool = True
    # A caveat about the data as a whole, to be shown as a warning rather than in the list of
    # files (an export's new class that some parts cannot have been labeled with).
    caveat: bool = False

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.reason}"
            if self.left_out
            else f"{self.file}: warning: {self.reason}"
        )


@dataclass
class ImportReport:
    name: str
    root: Path
    classes: list[str]
    split_counts: dict[str, dict[str, int]]
    issues: list[ImportIssue] = field(default_factory=list)
    converted: int = 0  # images stored as 8-bit PNG, decoded as stations decode them
    tile: TileSpec | None = None  # the grid the parts were cut by; None: whole images

    @property
    def n_images(self) -> int:
        """Images imported, parts: on a tiled dataset its source images, not its tiles (the
        Review page's export says "N parts" by it)."""
        return sum(c.get("parts", c["images"]) for c in self.split_counts.values())

    @property
    def n_tiles(self) -> int | None:
        """A tiled dataset's tile images; None for whole images."""
        return None if self.tile is None else sum(c["images"] for c in self.split_counts.values())

    @property
    def cut_into(self) -> str | None:
        """How the parts were cut, in one wording for `defects import`, `export-reviews` and
        the Review page's export (whose message did not say the parts were tiled); None for
        whole images."""
        if self.tile is None:
            return None
        return f"parts cut into {self.tile.describe()} ({self.n_tiles} tiles)"

    @property
    def left_out(self) -> list[ImportIssue]:
        return [issue for issue in self.issues if issue.left_out]

    @property
    def warnings(self) -> list[ImportIssue]:
        return [issue for issue in self.issues if not issue.left_out]


def _image_info(path: Path, boxes_as_judged: bool = False) -> tuple[int, int, str]:
    """Width, height and Pillow mode of a readable image; raises ValueError with the reason
    otherwise. An image over the stations' pixel limit is refused as they refuse it: Pillow's
    own refusal of a far larger one (a decompression bomb) stopped the whole import with a
    traceback, and one under Pillow's limit was taken to train on, gigabytes a decode.

    An image with an EXIF orientation is decoded turned, by stations, by tiling and by
    training alike, so its boxes must be on the turned pixels. Annotation tools differ (some
    draw on the pixels as stored, some as shown turned), and a mirrored or upside-down image
    keeps its size, so nothing in the file tells which: it is refused unless its boxes are
    known to be on the turned pixels (`boxes_as_judged`), where its size is the turned one."""
    largest = max_pixels()
    limit = f"over the {largest / 1e6:.0f} MP limit stations inspect (DEFECTS_MAX_MEGAPIXELS)"
    try:
        # Not opened where it is no regular file: an image's name on a named pipe held the
        # import for ever.
        special = not_a_file_reason(path.stat().st_mode)
        if special is not None:
            raise ValueError(special)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            allow_pixels_up_to(largest)  # (as stations)
            with Image.open(path) as image:
                if image.format in RUN_BY_ANOTHER_PROGRAM:  # (as stations refuse it)
                    raise ValueError(RUN_BY_ANOTHER_PROGRAM[image.format])
                width, height = image.size
                if width * height > largest:
                    raise ValueError(f"image too large: {width}x{height} is {limit}")
                # (Stations refuse it: trained on its first page, a defect on another page
                # was taught as background.)
                several = several_frames_reason(image)
                if several is not None:
                    raise ValueError(f"{several}; stations refuse it too")
                mode = image.mode
                is_jpeg = image.format == "JPEG"
                orientation = exif_orientation(image)
                # (A PNG's eXIf chunk may follow its pixel data, where its header lacks one.)
                exif_after_header = image.format == "PNG" and "exif" not in image.info
                # Every chunk of a PNG read to its end, each checked against its CRC: what
                # refuses one cut short or damaged. (It decodes no JPEG data: below.)
                image.verify()
            if exif_after_header and _png_has_chunk(path, b"eXIf"):
                # Decoded, as stations decode it: Pillow reads a late eXIf chunk only while
                # it decodes the pixels, and stations turn the image by what it reads there.
                with Image.open(path) as image:
                    image.load()
                    orientation = exif_orientation(image)
        if is_jpeg:
            _check_jpeg_whole(path)
        if orientation != 1 and not boxes_as_judged:
            raise ValueError(
                f"EXIF orientation {orientation} ({TURNING_ORIENTATIONS[orientation]}): "
                "stations judge it turned, and whether its boxes were drawn on its stored or "
                "its turned pixels cannot be told; save its pixels as its boxes were drawn on "
                "them, without the orientation tag, and import it again"
            )
        if orientation in (5, 6, 7, 8):  # a quarter turn: width and height swap
            width, height = height, width
        return width, height, mode
    except Image.DecompressionBombError as exc:
        size = re.search(r"Image size \((\d+) pixels\)", str(exc))
        found = f"{int(size.group(1)) / 1e6:.0f} MP is " if size else ""
        raise ValueError(f"image too large: {found}{limit}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"unreadable image ({exc.__class__.__name__}: {exc})") from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # (the file's first bytes; its chunks follow)


def _png_has_chunk(path: Path, kind: bytes) -> bool:
    """Whether the PNG at `path`, verified whole, holds a chunk of type `kind`. Read header by
    header, each chunk's data skipped by a seek: looking for a late eXIf read the whole file
    into memory once more, for every PNG without EXIF in its header."""
    with path.open("rb", buffering=0) as handle:  # (unbuffered: a skip reads nothing)
        handle.seek(len(PNG_SIGNATURE))
        while len(header := handle.read(8)) == 8:
            if header[4:] == kind:
                return True
            if header[4:] == b"IEND":
                return False
            handle.seek(int.from_bytes(header[:4], "big") + 4, os.SEEK_CUR)  # data and CRC
    return False


def _check_jpeg_whole(path: Path) -> None:
    """ValueError for a JPEG cut short, as stations refuse it. Pillow's verify reads no JPEG
    data: a half-copied image was imported, and ultralytics "restores" such a file by saving
    its decoded half over it, grey below the cut, boxes and all. Only a file that does not end
    with the end-of-image marker is decoded to be sure, so a good dataset costs no decoding."""
    with path.open("rb") as handle:
        handle.seek(max(path.stat().st_size - 1024, 0))
        tail = handle.read().rstrip(b"\x00")  # (some cameras pad after the marker)
    if tail.endswith(b"\xff\xd9"):
        return
    try:
        decode_image(path.read_bytes())
    except ImageDecodeError as exc:
        raise ValueError(str(exc)) from exc


# The modes `inspection.images.decode_image` scales to 8 bits (16-bit, 32-bit int, float).
# ultralytics reads such files with OpenCV, which keeps the top 8 of 16 bits: a 12-bit camera's
# image trained nearly black while stations saw it at full contrast.
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def _write_8_bit(source: Path, target: Path, width: int, height: int) -> None:
    """The image as stations decode it, saved as an 8-bit PNG; ValueError where it cannot be."""
    decoded = decode_image(source.read_bytes())
    if (decoded.width, decoded.height) != (width, height):
        # (The decoder turns an image as its EXIF orientation says: its boxes would not fit.)
        raise ValueError(
            f"decoded as {decoded.width}x{decoded.height}, stored as {width}x{height} "
            "(an EXIF orientation): cannot convert it with its boxes in place"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(decoded.source).save(target, format="PNG")


def _coordinate(value: float) -> str:
    """A box coordinate to a millionth of a pixel (`:g` showed 64.00003 as 64)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _box_text(box: Box) -> str:
    return f"({', '.join(_coordinate(v) for v in (box.x1, box.y1, box.x2, box.y2))})"


# Pixels: a box past the image's edge by no more than this is a rounding error (of a label's six
# decimals, say) and is clipped; it rejected the whole image.
CLIP_TOLERANCE = 0.5


def _clip_rounding(box: Box, width: int, height: int) -> Box:
    def clip(value: float, limit: int) -> float:
        if -CLIP_TOLERANCE <= value < 0:
            return 0.0
        if limit < value <= limit + CLIP_TOLERANCE:
            return float(limit)
        return value  # (NaN compares false: left for _check_box to refuse)

    return Box(
        box.class_index,
        clip(box.x1, width),
        clip(box.y1, height),
        clip(box.x2, width),
        clip(box.y2, height),
    )


def _check_box(box: Box, width: int, height: int, n_classes: int) -> str | None:
    coordinates = (box.x1, box.y1, box.x2, box.y2)
    # Checked first: every comparison with NaN is false, so a NaN box passed the checks below.
    if any(math.isnan(v) for v in coordinates):
        return "unreadable label: NaN coordinate"
    if any(math.isinf(v) for v in coordinates):
        return "unreadable label: infinite coordinate"
    if not 0 <= box.class_index < n_classes:
        return f"unknown class index {box.class_index}"
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        return f"empty box {_box_text(box)}"
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        return f"box {_box_text(box)} outside the {width}x{height} image"
    return None


def _same_stem_reason(path: Path, kept: Path, kept_shown: str) -> str:
    """Why an image is left out for another of its stem: labels are written as <stem>.txt, and
    ultralytics finds an image's label by its stem, so the two would share one label file."""
    if path.name != kept.name:
        return (
            f"same name as {kept_shown} apart from its extension: its label file would be "
            f"shared; only {kept_shown} is imported"
        )
    return f"same name as {kept_shown}, which is used instead"


def _duplicate_name_reason(path: Path, kept: Path, src: str) -> str:
    """Why an image of a kept one's name is left out, both folders named (under the source
    where they are in it): in two split folders, the bare name did not say which was kept."""
    if path.parent == kept.parent:  # (one file listed twice, as a COCO file may)
        return "duplicate file name; only the first is kept"
    top = Path(src) if Path(src).is_dir() else Path(src).parent
    here, there = (
        p.parent.relative_to(top).as_posix() if p.is_relative_to(top) else str(p.parent)
        for p in (path, kept)
    )
    return f"duplicate file name (in {there} and {here}): only the first, in {there}, is kept"


def _some_files(names: list[str], shown: int = 3) -> str:
    """A few file names for a report line, and how many more there are."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def _find_dir(src: Path, *names: str) -> Path:
    for name in names:
        for candidate in (src / name, src / name.lower(), src / name.capitalize()):
            if candidate.is_dir():
                return candidate
    raise UserError(f"{src} has no {' or '.join(names)} folder")


def _outside_reason(listed: str, folder: Path) -> str | None:
    """Why a path a list names (a COCO `file_name`, a path in DeepPCB's lists) would be read
    from outside `folder`, the dataset given, as "is ..."; None where it stays inside. Judged
    as written, on either system's separators, before any file is opened: `../other/x.jpg`,
    `/home/x.jpg` or `C:\\x.jpg` took a file from anywhere this user can read into the dataset."""
    written = PureWindowsPath(listed)  # (reads both "/" and "\\" as separators)
    if written.drive:
        what = "a path on a drive or a network share"
    elif written.root:
        what = "an absolute path"
    elif ".." in written.parts:
        what = "a path through '..'"
    else:
        return None
    return f"is {what}: images are read only inside {folder}"


def _special_file(path: Path) -> str | None:
    """Why an annotation or label file that is there is not read (a named pipe, a device), or
    None: a regular file, a folder (said where it is read) or nothing at all."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return None if stat.S_ISDIR(mode) else not_a_file_reason(mode)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


# --- readers: each returns (class names, labeled images, issues) --------------------------------


VocObject = tuple[str, float, float, float, float]  # class name, x1, y1, x2, y2


def _parse_voc(xml_path: Path) -> tuple[str, list[VocObject], tuple[int, int] | None]:
    """The <filename>, objects and <size> (None where it gives none, or zero) of a VOC
    annotation; ValueError or ParseError with the reason."""
    root = ET.parse(xml_path).getroot()
    filename = (root.findtext("filename") or "").strip()
    size = _annotated_size(root.findtext("size/width"), root.findtext("size/height"))
    objects: list[VocObject] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if bndbox is None or not name:
            raise ValueError("object without a name or bndbox")
        texts = [(bndbox.findtext(k) or "").strip() for k in ("xmin", "ymin", "xmax", "ymax")]
        if not all(texts):
            raise ValueError("bndbox with a missing coordinate")
        x1, y1, x2, y2 = (float(t) for t in texts)  # (a NaN is refused with the boxes' checks)
        objects.append((name, x1, y1, x2, y2))
    return filename, objects, size


def _annotated_size(width: object, height: object) -> tuple[int, int] | None:
    """An annotation's image size, where it gives a positive one (some tools write 0 for
    "not known")."""
    try:
        size = (int(float(str(width))), int(float(str(height))))
    except ValueError:
        return None
    return size if min(size) > 0 else None


def _voc_image(
    xml_path: Path,
    filename: str,
    images_dir: Path,
    images_of_stem: dict[str, list[Path]],
    image_at: dict[str, Path],
    xml_of_stem: dict[str, list[str]],
) -> tuple[Path | None, str]:
    """The image an annotation file is for (None where there is none), and why: a warning where
    its <filename> names another image, or the reason none was found.

    The image of the annotation file's own stem comes first: a <filename> left stale by a
    rename once gave part_009.jpg the boxes of part_008.xml, dropped part_009.xml's own, and
    imported the defective part_008.jpg as a good part."""
    named = Path(filename).name if filename else ""
    own = images_of_stem.get(xml_path.stem, [])
    if own:
        image = next((p for p in own if p.name == named), own[0])
        # A <filename> without its extension (as some labelling tools and NEU-DET write it)
        # names the image of that stem.
        if named and named not in (image.name, image.stem):
            shown = image.relative_to(images_dir).as_posix()
            return image, (
                f"its <filename> {filename} names another image (left stale by a rename?): "
                f"its boxes are taken for {shown}, the image of its own name"
            )
        return image, ""
    if not named:
        return None, f"image {xml_path.stem} not found"
    # The image at that path, else one of that name, else one of that stem.
    of_stem = images_of_stem.get(Path(named).stem, [])
    image = image_at.get(filename) or next((p for p in of_stem if p.name == named), None)
    image = image or (of_stem[0] if of_stem else None)
    if image is None:
        return None, f"image {filename} not found"
    if image.stem in xml_of_stem:  # that image has an annotation file of its own
        # (By their paths under Annotations/: by a stem, sub/x.xml and x.xml read the same.)
        return None, (
            f"no image of its own name, and its <filename> {filename} names the image of "
            f"{' and '.join(xml_of_stem[image.stem])}"
        )
    return image, ""


def _look_alike_classes(files_of_class: dict[str, list[str]]) -> list[ImportIssue]:
    """Warnings about class names that look like one class spelled two ways ('Scratch' and
    'scratch', 'spot' and 'spott'): each became a class of its own."""
    names = sorted(files_of_class)
    group_of = {name: name for name in names}

    def group(name: str) -> str:
        while group_of[name] != name:
            name = group_of[name]
        return name

    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if look_alike_classes(first, second):
                group_of[group(second)] = group(first)
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(group(name), []).append(name)
    if all(len(m) == 1 for m in members.values()):
        return []
    # The most used spelling of each group stands for it in the suggested class list.
    chosen = {
        root: max(m, key=lambda n: (len(files_of_class[n]), -names.index(n)))
        for root, m in members.items()
    }
    suggestion = ",".join(sorted(set(chosen.values())))

    def in_files(class_name: str) -> str:
        n = len(files_of_class[class_name])
        return f"{class_name!r} ({n} file{'' if n == 1 else 's'})"

    warnings = []
    for root, group_names in members.items():
        for name in group_names:
            if name == chosen[root]:
                continue
            main = chosen[root]
            if class_key(name) == class_key(main):
                how = "differs only in case, spacing or '_'/'-' from"
            elif singular_or_plural(name, main):
                how = "is the singular or plural of"
            else:
                how = "looks like a misspelling of"
            warnings.append(
                ImportIssue(
                    _some_files(files_of_class[name]),
                    f"class {in_files(name)} {how} {in_files(main)}: each became a class of its "
                    "own; if they are one, correct the annotation files, or import with "
                    f"--classes {suggestion} (which leaves out the files of the other names)",
                    left_out=False,
                )
            )
    return warnings


def read_voc(
    src: Path, classes: list[str] | None
) -> tuple[list[str], list[LabeledImage], list[ImportIssue]]:
    annotations = _find_dir(src, "annotations", "Annotations")
    images_dir = _find_dir(src, "images", "JPEGImages")
    issues: list[ImportIssue] = []
    images_of_stem: dict[str, list[Path]] = {}
    for path in _images_in(images_dir):
        images_of_stem.setdefault(path.stem, []).append(path)
    image_at = {
        p.relative_to(images_dir).as_posix(): p for paths in images_of_stem.values() for p in paths
    }
    # In sub-folders too, as the images are read: CVAT keeps a task's sub-folders under
    # Annotations/, and an image whose annotation file was not looked for there passed for a
    # good part.
    xml_paths = sorted(annotations.rglob("*.xml"))

    def shown(xml_path: Path) -> str:
        """An annotation file as issues name it: by its path under Annotations/, as its image
        is named under the images (by its name, sub/x.xml and x.xml read the same)."""
        return xml_path.relative_to(annotations).as_posix()

    xml_of_stem: dict[str, list[str]] = {}
    for xml_path in xml_paths:
        xml_of_stem.setdefault(xml_path.stem, []).append(shown(xml_path))
    parsed: list[tuple[Path, Path, list[VocObject], tuple[int, int] | None]] = []
    annotation_of: dict[Path, Path] = {}  # image: the annotation file taken for it
    annotated_twice: set[Path] = set()
    for xml_path in xml_paths:
        special = _special_file(xml_path)
        if special is not None:
            issues.append(ImportIssue(shown(xml_path), f"unreadable annotation: {special}"))
            continue
        try:
            filename, objects, size = _parse_voc(xml_path)
        except (ET.ParseError, ValueError) as exc:
            # Its image is left out below: without its boxes it would pass for a good part.
            issues.append(ImportIssue(shown(xml_path), f"unreadable annotation: {exc}"))
            continue
        image_path, why = _voc_image(
            xml_path, filename, images_dir, images_of_stem, image_at, xml_of_stem
        )
        if image_path is None:
            issues.append(ImportIssue(shown(xml_path), why))
            continue
        if why:
            issues.append(ImportIssue(shown(xml_path), why, left_out=False))
        if image_path in annotation_of:
            # Two annotation files for one image: which boxes are right is not known.
            issues.append(
                ImportIssue(
                    shown(xml_path),
                    f"names the image {image_path.relative_to(images_dir).as_posix()}, which "
                    f"{shown(annotation_of[image_path])} annotates too: the image is left out",
                )
            )
            annotated_twice.add(image_path)
            continue
        annotation_of[image_path] = xml_path
        parsed.append((xml_path, image_path, objects, size))
    parsed = [entry for entry in parsed if entry[1] not in annotated_twice]
    files_of_class: dict[str, list[str]] = {}
    for xml_path, _, objects, _ in parsed:
        for class_name in sorted({o[0] for o in objects}):
            files_of_class.setdefault(class_name, []).append(shown(xml_path))
    class_names = classes or sorted(files_of_class)
    if not classes:
        issues += _look_alike_classes(files_of_class)
    index = {name: i for i, name in enumerate(class_names)}
    images: list[LabeledImage] = []
    for xml_path, image_path, objects, size in parsed:
        unknown = sorted({o[0] for o in objects if o[0] not in index})
        if unknown:
            issues.append(ImportIssue(shown(xml_path), f"unknown class {', '.join(unknown)}"))
            continue
        boxes = [Box(index[n], x1, y1, x2, y2) for n, x1, y1, x2, y2 in objects]
        images.append(LabeledImage(image_path, 0, 0, boxes, annotated_size=size))
    for stem, paths in images_of_stem.items():
        # One image per stem: the annotated one where there is one, else the first.
        kept = next((p for p in paths if p in annotation_of), paths[0])
        for path in paths:
            if path != kept:
                shown = kept.relative_to(images_dir).as_posix()
                issues.append(
                    ImportIssue(
                        path.relative_to(images_dir).as_posix(),
                        _same_stem_reason(path, kept, shown),
                    )
                )
        # An image with no annotation file is a good part. One whose annotation file was not
        # taken (unreadable: said above) must not pass for one.
        if kept not in annotation_of and stem not in xml_of_stem:
            images.append(LabeledImage(kept, 0, 0, []))
    return class_names, images, issues


def _yolo_names(names: object, path: Path) -> list[str] | None:
    """The class names of a data.yaml's `names`, in index order; None where it has none.
    A mapping is ordered by its keys as numbers: keys written as strings ('10' before '2')
    once gave the label lines' classes other names, silently. A gap in its indices would
    name every class after it wrongly, and is refused."""
    if isinstance(names, list):
        return [str(n) for n in names]
    if not isinstance(names, dict):
        return None
    try:
        by_index = {int(str(k)): str(v) for k, v in names.items()}
    except ValueError as exc:
        raise UserError(f"{path}: a key of its names is not a class index ({exc})") from exc
    if sorted(by_index) != list(range(len(by_index))):
        raise UserError(
            f"{path}: its names are numbered {sorted(by_index)}, not 0 to {len(by_index) - 1}: "
            "give every index its name, or the class names in index order with --classes"
        )
    return [by_index[i] for i in range(len(by_index))]


def _yolo_class_names(src: Path) -> list[str]:
    for name in ("data.yaml", "dataset.yaml"):
        path = src / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise UserError(f"unreadable {path}: {exc}".splitlines()[0]) from exc
            # (An empty file, or one of no mapping, has no names: classes.txt may have them.)
            names = _yolo_names(data.get("names"), path) if isinstance(data, dict) else None
            if names is not None:
                return names
    # (LabelImg writes classes.txt beside its labels.)
    for path in (src / "classes.txt", src / "labels" / "classes.txt"):
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    raise UserError(f"{src} has no data.yaml (with names) or classes.txt")


# A source's split folders by name: Roboflow and ultralytics name the validation split `valid`.
SPLIT_OF_FOLDER = {"train": "train", "val": "val", "valid": "val", "test": "test"}


def _yolo_folders(src: Path) -> list[tuple[Path, Path, str | None, Path]]:
    """Each (images folder, labels folder, its split or None, folder issues are named from) of
    a YOLO source: `images/` and `labels/` (their split sub-folders read as the images are),
    else Roboflow's export, `train/images` and `train/labels`, `valid/...`, `test/...`, which
    was refused as having no images folder. (Its data.yaml's paths, `../train/images` often,
    point above the export: the folders are found by their names.)"""
    if any((src / name).is_dir() for name in ("images", "Images")):
        images_dir = _find_dir(src, "images")
        return [(images_dir, _find_dir(src, "labels"), None, images_dir)]
    split_folders = sorted(
        (folder, SPLIT_OF_FOLDER[folder.name.lower()])
        for folder in (src.iterdir() if src.is_dir() else [])
        if folder.name.lower() in SPLIT_OF_FOLDER and (folder / "images").is_dir()
    )
    if not split_folders:
        _find_dir(src, "images")  # (raises: no images folder, nor a split folder holding one)
    # (Without its labels folder, every image of a split would pass for a good part.)
    for folder, _ in split_folders:
        _find_dir(folder, "labels")
    return [(folder / "images", folder / "labels", split, src) for folder, split in split_folders]


def read_yolo(
    src: Path, classes: list[str] | None
) -> tuple[list[str], list[LabeledImage], list[ImportIssue]]:
    class_names = classes or _yolo_class_names(src)
    issues: list[ImportIssue] = []
    images: list[LabeledImage] = []
    for images_dir, labels_dir, split, shown_from in _yolo_folders(src):
        folder_images, folder_issues = _read_yolo_folder(
            src, images_dir, labels_dir, split, shown_from
        )
        images += folder_images
        issues += folder_issues
    return class_names, images, issues


def _read_yolo_folder(
    src: Path, images_dir: Path, labels_dir: Path, folder_split: str | None, shown_from: Path
) -> tuple[list[LabeledImage], list[ImportIssue]]:
    """The labeled images and issues of one images folder and its labels folder; an image's
    split is `folder_split`, else that of its sub-folder (`images/valid/` is val)."""
    issues: list[ImportIssue] = []
    images: list[LabeledImage] = []
    label_paths_used: set[Path] = set()
    for image_path in _images_in(images_dir):
        relative = image_path.relative_to(images_dir)
        label_path = labels_dir / relative.with_suffix(".txt")
        label_paths_used.add(label_path)
        split = folder_split or (
            SPLIT_OF_FOLDER.get(relative.parts[0].lower()) if len(relative.parts) > 1 else None
        )
        # (From the export's top where it has split folders: one name may be in two of them.)
        shown = image_path.relative_to(shown_from)
        boxes: list[Box] = []
        width, height = 0, 0
        mode: str | None = None  # (read below with the boxes, kept for the import's checks)
        special = _special_file(label_path)
        if special is not None:  # (taken for no label, its image passed for a good part)
            issues.append(
                ImportIssue(str(label_path.relative_to(src)), f"unreadable label: {special}")
            )
            continue
        if label_path.is_file():
            try:
                width, height, mode = _image_info(image_path)
            except ValueError as exc:
                issues.append(ImportIssue(str(shown), str(exc)))
                continue
            try:
                for number, line in enumerate(label_path.read_text().splitlines(), 1):
                    values = line.split()
                    if not values:
                        continue
                    # (Its first five values once made a box of a segmentation polygon.)
                    if len(values) > 5:
                        raise ValueError(
                            f"line {number} has {len(values)} values: a segmentation polygon, "
                            "not a box: export boxes"
                        )
                    if len(values) < 5:
                        raise ValueError(
                            f"line {number} has {len(values)} values, not 5 "
                            "(class x_center y_center width height)"
                        )
                    c, xc, yc, w, h = values
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
        images.append(LabeledImage(image_path, width, height, boxes, split, mode))
    for label_path in sorted(labels_dir.rglob("*.txt")):
        # (classes.txt: the class list some labelling tools keep beside the labels)
        if label_path not in label_paths_used and label_path.name != "classes.txt":
            image_stem = (images_dir / label_path.relative_to(labels_dir)).with_suffix("")
            # (An image of a type not taken, a .gif say, was reported as no image at all.)
            other_types = sorted(
                p.name
                for p in image_stem.parent.glob(f"{glob.escape(image_stem.name)}.*")
                if p.is_file()
            )
            reason = (
                f"its image {other_types[0]} is of a type not taken "
                f"({', '.join(sorted(IMAGE_SUFFIXES))})"
                if other_types
                else f"no {image_stem.relative_to(src)}.* found"
            )
            issues.append(
                ImportIssue(str(label_path.relative_to(src)), f"label file with no image: {reason}")
            )
    return images, issues


def _coco_bbox(ann: dict) -> tuple[float, float, float, float]:
    """An annotation's box (x, y, width, height): its `bbox`, else the extent of its
    `segmentation` polygons (some tools write a polygon alone: its image was left out as
    missing a bbox). An RLE mask alone is refused with the reason: nothing here decodes it."""
    if ann.get("bbox"):
        x, y, w, h = (float(v) for v in ann["bbox"])
        return x, y, w, h
    segmentation = ann.get("segmentation")
    if not segmentation:
        raise KeyError("bbox")
    if isinstance(segmentation, dict):
        raise ValueError(
            "an RLE mask (segmentation as counts) without a bbox: export it with its boxes"
        )
    if not isinstance(segmentation, list) or not all(
        isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
        for polygon in segmentation
    ):
        raise ValueError(
            "unreadable segmentation: not a list of polygons [x1, y1, x2, y2, x3, y3, ...]"
        )
    xs = [float(v) for polygon in segmentation for v in polygon[0::2]]
    ys = [float(v) for polygon in segmentation for v in polygon[1::2]]
    # (min and max pass a NaN over unless it comes first: the box was taken without it.)
    not_finite = next((v for v in xs + ys if not math.isfinite(v)), None)
    if not_finite is not None:
        raise ValueError(
            f"a segmentation polygon has the coordinate {not_finite}, not a finite number"
        )
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _parent_categories(categories: list[dict], annotated: set[object]) -> dict[str, list[str]]:
    """The names of categories that are only the `supercategory` of others, none of their ids
    annotated, each with the names of the categories under it. Roboflow's export has one (id
    0, named after the workspace, over every class): made a class, it was an empty class 0.
    (A category that is its own supercategory, as COCO's `person` is, is not one.)"""
    ids_of_name: dict[str, set[object]] = {}
    for category in categories:
        ids_of_name.setdefault(str(category["name"]), set()).add(category["id"])
    under: dict[str, list[str]] = {}
    for category in categories:
        parent = category.get("supercategory")
        if isinstance(parent, str) and parent != str(category["name"]):
            under.setdefault(parent, []).append(str(category["name"]))
    return {
        name: children
        for name, children in under.items()
        if name in ids_of_name and not ids_of_name[name] & annotated
    }


def _coco_candidates(folder: Path) -> list[Path]:
    """The .json files of a folder, and of its `annotations/`, that may be its COCO file."""
    return [
        path
        for path in sorted(folder.glob("*.json")) + sorted(folder.glob("annotations/*.json"))
        if _special_file(path) is None  # (a named pipe is not read: it would wait)
    ]


def _one_coco_file(folder: Path) -> Path:
    candidates = _coco_candidates(folder)
    if len(candidates) != 1:
        raise UserError(f"{folder} must hold exactly one COCO .json file (found {len(candidates)})")
    return candidates[0]


# A CVAT subset's split by its name, as the user typed it in CVAT (`Train`, `Validation`...).
SPLIT_OF_SUBSET = {**SPLIT_OF_FOLDER, "training": "train", "validation": "val", "testing": "test"}


def _cvat_subset(json_path: Path) -> str | None:
    """The subset of a CVAT COCO 1.0 file, `annotations/instances_<subset>.json`; else None."""
    match = re.fullmatch(r"instances_(.+)\.json", json_path.name)
    return match.group(1) if match and json_path.parent.name.lower() == "annotations" else None


def _coco_files(
    src: Path, splits_given: bool = False
) -> list[tuple[Path, Path | None, str | None]]:
    """Each COCO file of SRC, the split folder it is in (None: the source has no split
    folders) and the split of its images (None: by --splits or by their names' hash): SRC's
    one .json; CVAT's export of a task with subsets, an `annotations/instances_<subset>.json`
    for each, its images in `images/<subset>/` (or all in `images/`), which was refused as
    holding several; else Roboflow's export, a `_annotations.coco.json` beside the images of
    each of `train/`, `valid/` and `test/`, which was refused as holding none."""
    if src.is_file():
        return [(src, None, None)]
    candidates = _coco_candidates(src)
    if len(candidates) > 1 and all(_cvat_subset(path) for path in candidates):
        return _cvat_subset_files(src, candidates, splits_given)
    split_folders = sorted(
        folder
        for folder in src.iterdir()
        if folder.name.lower() in SPLIT_OF_FOLDER and folder.is_dir()
    )
    if candidates or not any(_coco_candidates(f) for f in split_folders):
        return [(_one_coco_file(src), None, None)]
    # (Every split folder: one without its .json would leave its images out unsaid.)
    return [
        (_one_coco_file(folder), folder, SPLIT_OF_FOLDER[folder.name.lower()])
        for folder in split_folders
    ]


def _cvat_subset_files(
    src: Path, paths: list[Path], splits_given: bool
) -> list[tuple[Path, None, str | None]]:
    """CVAT's subset files, each with the split its subset's name says. One whose name says
    none (`default` beside `Train`) is refused unless --splits places the images: taken by
    their names' hash, its images would land in the splits the others' names fixed."""
    files = [(path, None, SPLIT_OF_SUBSET.get(str(_cvat_subset(path)).lower())) for path in paths]
    unsplit = [path for path, _, split in files if split is None]
    if unsplit and not splits_given:
        said = ", ".join(f"{p.relative_to(src).as_posix()} ({_cvat_subset(p)!r})" for p in unsplit)
        beside = [p.relative_to(src).as_posix() for p, _, split in files if split is not None]
        raise UserError(
            f"no split is named by the subset of {said}"
            + (f", beside {', '.join(beside)}" if beside else "")
            + ": name each subset train, val or test (or training, validation, testing; any "
            "case) in CVAT and export again, or give --splits"
        )
    return files


def _load_coco(json_path: Path) -> tuple[list[dict], list, list]:
    """A COCO file's categories (by id), image records and annotations."""
    try:
        coco = json.loads(json_path.read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        return categories, coco["images"], coco.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"unreadable COCO file {json_path}: {exc}") from exc


def _check_same_categories(
    first: str, first_categories: list[dict], other: str, other_categories: list[dict]
) -> None:
    """Refuse split files whose categories differ: a box's class is by its category's id, so
    one id of two names would give one split's boxes another split's class."""
    names = [{c["id"]: c.get("name") for c in cs} for cs in (first_categories, other_categories)]
    if names[0] == names[1]:
        return
    id_ = next(
        i for i in sorted({*names[0], *names[1]}, key=str) if names[0].get(i) != names[1].get(i)
    )
    said = [repr(n[id_]) if id_ in n else "none" for n in names]
    raise UserError(
        f"the categories of {first} and {other} differ (id {id_}: {said[0]} in {first}, "
        f"{said[1]} in {other}): export every split with the same classes"
    )


def read_coco(
    src: Path, classes: list[str] | None, splits_given: bool = False
) -> tuple[list[str], list[LabeledImage], list[ImportIssue]]:
    """A COCO source's classes, images and issues; in Roboflow's layout, each split folder's
    images in the source's own split (`valid` is val), its issues named under that folder; in
    CVAT's, each subset's images in the split its name says (`splits_given`: --splits is)."""
    files = [
        (json_path, folder, split, _load_coco(json_path))
        for json_path, folder, split in _coco_files(src, splits_given)
    ]
    shown = [
        json_path.name if folder is None else json_path.relative_to(src).as_posix()
        for json_path, folder, *_ in files
    ]
    for n in range(1, len(files)):
        _check_same_categories(shown[0], files[0][3][0], shown[n], files[n][3][0])
    # (Over every split: a category annotated in one split alone is a class of each.)
    annotated = {
        a.get("category_id") for *_, (_, _, anns) in files for a in anns if isinstance(a, dict)
    }
    # CVAT's subsets may share `images/`: an image is unlisted only where no file lists it.
    subsets = len(files) > 1 and all(folder is None for _, folder, *_ in files)
    listed_in_source: set[Path] = set()
    class_names: list[str] = []
    images: list[LabeledImage] = []
    issues: list[ImportIssue] = []
    for n, (json_path, folder, split, (categories, records, file_annotations)) in enumerate(files):
        class_names, file_images, file_issues, listed = _read_coco_file(
            src if folder is None else folder,
            json_path,
            categories,
            records,
            file_annotations,
            classes,
            annotated,
            say_categories=n == 0,
        )
        for image in file_images:
            image.split = split
        if subsets:
            listed_in_source |= listed
        else:
            file_issues += _unlisted_coco_images(listed, json_path.parent, json_path.name)
        if folder is not None:
            file_issues = [replace(i, file=f"{folder.name}/{i.file}") for i in file_issues]
        images += file_images
        issues += file_issues
    if subsets:
        issues += _unlisted_coco_images(
            listed_in_source, src, " or ".join(json_path.name for json_path, *_ in files)
        )
    return class_names, images, issues


def _unlisted_coco_images(listed: set[Path], shown_from: Path, listed_in: str) -> list[ImportIssue]:
    """An image beside the listed ones but not listed itself: said, not passed over unseen (a
    good part is listed with no annotations; this one may be a part whose labels were lost)."""
    issues = []
    shown_from = shown_from.resolve()
    for folder in sorted({path.parent for path in listed}):
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if path.is_file() and path not in listed:
                issues.append(
                    ImportIssue(
                        str(
                            path.relative_to(shown_from)
                            if path.is_relative_to(shown_from)
                            else path
                        ),
                        f"image not listed in {listed_in}: not imported (list it, with no "
                        "annotations for a good part)",
                    )
                )
    return issues


def _read_coco_file(
    src: Path,
    json_path: Path,
    categories: list[dict],
    records: list,
    annotations: list,
    classes: list[str] | None,
    annotated: set[object],
    say_categories: bool = True,
) -> tuple[list[str], list[LabeledImage], list[ImportIssue], set[Path]]:
    """One COCO file's classes, images, issues (those of its categories where
    `say_categories`: a split file after the first has the same) and the images it lists
    that are there (resolved); `annotated`, the category ids annotated in any file of the
    source."""
    try:
        name_of_category = {c["id"]: str(c["name"]) for c in categories}
        parents = {} if classes else _parent_categories(categories, annotated)
        # One class of a name given to several categories (as merging two exports leaves it):
        # each once made a class, every box going to the first and the others left empty.
        class_names = classes or [
            name for name in dict.fromkeys(name_of_category.values()) if name not in parents
        ]
    except (KeyError, TypeError) as exc:
        raise UserError(f"unreadable COCO categories in {json_path}: missing {exc}") from exc
    base = json_path.parent
    # The dataset's folder: SRC, or where SRC is the .json itself, its folder (the one above
    # where that is COCO's `annotations/`). Images are looked for there only.
    top = src if src.is_dir() else base.parent if base.name.lower() == "annotations" else base
    # (CVAT's subset file `annotations/instances_Train.json` has its images in `images/Train/`,
    # or in older versions all in `images/`.)
    subset = _cvat_subset(json_path)
    roots = [
        root
        for root in (
            base,
            base / "images",
            *([base.parent / "images" / subset] if subset else []),
            base.parent / "images",
            base.parent,
        )
        if root.is_relative_to(top)
    ]
    by_image: dict[object, list[Box]] = {}
    # An image whose annotation cannot be read is left out, never imported without that box:
    # it would count as a good part and teach the model that its defect is background.
    unreadable: dict[object, str] = {}
    issues = [
        ImportIssue(
            json_path.name,
            f"category {parent!r} has no annotation and is only the supercategory of "
            f"{_some_files(children)}: not made a class",
            left_out=False,
        )
        for parent, children in parents.items()
        if say_categories
    ]
    ids_of_name: dict[str, list[str]] = {}
    for category_id, category_name in name_of_category.items():
        ids_of_name.setdefault(category_name, []).append(str(category_id))
    for category_name, ids in ids_of_name.items():
        if say_categories and len(ids) > 1 and category_name in class_names:
            issues.append(
                ImportIssue(
                    json_path.name,
                    f"categories {', '.join(ids[:-1])} and {ids[-1]} are "
                    f"{'both' if len(ids) == 2 else 'all'} named {category_name!r}: their "
                    f"boxes are imported as the one class {category_name!r}",
                    left_out=False,
                )
            )
    for ann in annotations:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        try:
            if not isinstance(ann, dict):
                raise TypeError(f"not an object: {ann!r}"[:80])
            x, y, w, h = _coco_bbox(ann)
            category = ann["category_id"]
            if ann.get("iscrowd"):
                # One box over many defects (or an area of them): not an object a detector
                # learns to find, and dropping the box alone would make its defects background.
                raise ValueError(
                    "a crowd region (iscrowd 1), not a single defect: label its defects one "
                    "by one to import the image"
                )
            if category not in name_of_category:
                raise ValueError(
                    f"category id {category} is not among the categories of {json_path.name}"
                )
            if name_of_category[category] not in class_names:
                raise ValueError(
                    f"category {name_of_category[category]!r} (id {category}) is not among "
                    "the classes given"
                )
            index = class_names.index(name_of_category[category])
            by_image.setdefault(image_id, []).append(Box(index, x, y, x + w, y + h))
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
        outside = _outside_reason(file_name, top)
        if outside is not None:
            issues.append(ImportIssue(file_name, f"file_name {outside}"))
            continue
        path = next((r / file_name for r in roots if (r / file_name).is_file()), None)
        if path is None:
            issues.append(ImportIssue(file_name or str(record.get("id")), "image file not found"))
            continue
        size = _annotated_size(record.get("width"), record.get("height"))
        images.append(LabeledImage(path, 0, 0, by_image.get(record["id"], []), annotated_size=size))
    for image_id in sorted(set(by_image) - known_ids, key=str):
        issues.append(
            ImportIssue(json_path.name, f"annotations of image {image_id}, which is not listed")
        )
    listed_paths = [
        root / str(record["file_name"])
        for record in records
        if isinstance(record, dict)
        and record.get("file_name")
        and _outside_reason(str(record["file_name"]), top) is None
        for root in roots
        if (root / str(record["file_name"])).is_file()
    ]
    # (Folders resolved, files not: an image may be a link to a file kept elsewhere.)
    listed = {path.parent.resolve() / path.name for path in listed_paths}
    return class_names, images, issues, listed


# DeepPCB (Tang et al. 2019): pairs of aligned board images, `N_test.jpg` with defects and
# `N_temp.jpg` the same board defect-free, boxes of each test image in `<folder>_not/N.txt`
# (`x1 y1 x2 y2 type` in pixels, by spaces or commas, types 1 to 6), and the authors' split in
# trainval.txt and test.txt (lines `group/G/N.jpg group/G_not/N.txt`).
DEEPPCB_CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
# Every fifth trainval board (the first, sixth, ...) goes to val, the rest to train; the test
# list is test. (The split bench/classifier_verdict.py's published figures were measured on.)
DEEPPCB_VAL_EVERY = 5


def _deeppcb_boxes(box_file: Path, n_classes: int) -> list[Box]:
    """The boxes of one test image; ValueError with the line and reason otherwise."""
    boxes = []
    for number, line in enumerate(box_file.read_text().splitlines(), 1):
        values = line.replace(",", " ").split()
        if not values:
            continue
        if len(values) != 5:
            raise ValueError(f"line {number} has {len(values)} values, not 5 (x1 y1 x2 y2 type)")
        x1, y1, x2, y2 = (float(v) for v in values[:4])
        kind = int(values[4])
        if not 1 <= kind <= n_classes:
            raise ValueError(f"line {number}: defect type {kind} is not one of 1 to {n_classes}")
        boxes.append(Box(kind - 1, x1, y1, x2, y2))
    return boxes


def _deeppcb_boards(root: Path) -> tuple[list[tuple[Path, Path, str]], list[ImportIssue]]:
    """Each board's test image, box file and split: from the authors' lists where they are,
    else every `*_test` image, split by board number."""
    issues: list[ImportIssue] = []
    lists = [root / "trainval.txt", root / "test.txt"]
    if not any(path.is_file() for path in lists):
        return [
            (
                path,
                path.parent.with_name(f"{path.parent.name}_not") / f"{path.stem[:-5]}.txt",
                _hash_split(path.stem[:-5]),
            )
            for path in _images_in(root)
            if path.stem.endswith("_test")
        ], issues
    absent = [path.name for path in lists if not path.is_file()]
    if absent:
        present = next(path.name for path in lists if path.is_file())
        raise UserError(f"{root} has {present} but no {absent[0]}: DeepPCB's split needs both")
    boards: list[tuple[Path, Path, str]] = []
    trainval_boards = 0
    for list_path in lists:
        for number, line in enumerate(list_path.read_text().splitlines(), 1):
            values = line.split()
            if not values:
                continue
            if len(values) != 2:
                issues.append(
                    ImportIssue(list_path.name, f"line {number} is not 'IMAGE BOX_FILE': {line}")
                )
                continue
            outside = next(
                (
                    f"{value} {why}"
                    for value in values
                    if (why := _outside_reason(value, root)) is not None
                ),
                None,
            )
            if outside is not None:
                issues.append(ImportIssue(list_path.name, f"line {number}: {outside}"))
                continue
            if list_path.name == "test.txt":
                split = "test"
            else:
                split = "val" if trainval_boards % DEEPPCB_VAL_EVERY == 0 else "train"
                trainval_boards += 1
            listed = root / values[0]  # N.jpg: on disk N_test.jpg and its template N_temp.jpg
            boards.append(
                (listed.with_name(f"{listed.stem}_test{listed.suffix}"), root / values[1], split)
            )
    return boards, issues


def read_deeppcb(
    src: Path, classes: list[str] | None
) -> tuple[list[str], list[LabeledImage], list[ImportIssue]]:
    """Each board's test image with its boxes (a defective part) and its template (a good part
    of the same split: the false calls calibration and evaluation count)."""
    class_names = classes or DEEPPCB_CLASSES
    root = src / "PCBData" if (src / "PCBData").is_dir() else src
    boards, issues = _deeppcb_boards(root)
    if not boards:
        raise UserError(
            f"{src} has no DeepPCB boards (N_test.jpg images, or trainval.txt and test.txt)"
        )

    def shown(path: Path) -> str:
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    images: list[LabeledImage] = []
    taken: set[Path] = set()
    for test_image, box_file, split in boards:
        template = test_image.with_name(f"{test_image.stem[:-5]}_temp{test_image.suffix}")
        taken.update((test_image, template))
        if not test_image.is_file():
            issues.append(ImportIssue(shown(test_image), "image not found"))
        elif not box_file.is_file():
            # Without its boxes it would pass for a good part.
            issues.append(ImportIssue(shown(test_image), f"box file {shown(box_file)} not found"))
        else:
            try:
                boxes = _deeppcb_boxes(box_file, len(class_names))
            except (ValueError, UnicodeDecodeError) as exc:
                issues.append(
                    ImportIssue(shown(test_image), f"unreadable box file {shown(box_file)}: {exc}")
                )
            else:
                images.append(LabeledImage(test_image, 0, 0, boxes, split))
        if template.is_file():
            images.append(LabeledImage(template, 0, 0, [], split))
        else:
            issues.append(
                ImportIssue(
                    shown(template),
                    "template not found: the board has no good part",
                    left_out=False,
                )
            )
    # Boards beside the listed ones but not listed: said, not passed over unseen.
    unlisted = (
        "not listed in trainval.txt or test.txt: not imported"
        if (root / "test.txt").is_file()
        else "a template without its test image: not imported"
    )
    for folder in sorted({path.parent for path in taken if path.parent.is_dir()}):
        for path in _images_in(folder):
            if (
                path.parent == folder
                and path not in taken
                and path.stem.endswith(("_test", "_temp"))
            ):
                issues.append(ImportIssue(shown(path), unlisted))
    return class_names, images, issues


READERS = {"voc": read_voc, "yolo": read_yolo, "coco": read_coco, "deeppcb": read_deeppcb}


# --- tiles ---------------------------------------------------------------------------------------

DATA_YAML_TILE_KEY = "defects_tile"  # in data.yaml (ultralytics ignores keys it does not know)
TILE_MAP = "tiles.csv"
# `original_name`: the part's name as recorded (an export of reviews, whose parts are named by
# content hash), empty where `part` is the source's own file name (an import).
TILE_MAP_COLUMNS = (
    "tile",
    "split",
    "part",
    "x0",
    "y0",
    "x1",
    "y1",
    "part_defective",
    "original_name",
)
# Beside an export of reviews, whole or tiled: each part's image (or, tiled, its `part` in
# tiles.csv), split, id and name as recorded, so that a file traces back to the camera's.
PART_MAP = "parts.csv"
PART_MAP_COLUMNS = ("part", "split", "part_id", "original_name")
# A box cut by a tile's edge: the fragment inside the tile is a defect of that tile, since it
# shows part of the defect, unless it is a sliver, under MIN_FRAGMENT pixels across the cut and
# under half the box's own extent there (ultralytics' augmentation drops boxes under 2 px as
# well). The half keeps both halves of a defect of a few pixels that an edge cuts in two. A box
# whose fragments would all be slivers keeps its largest, so that no labeled defect of a part is
# in none of its tiles.
MIN_FRAGMENT = 2.0


def tile_name(stem: str, x0: int, y0: int, suffix: str = ".png") -> str:
    """A tile's file name: its part's stem and its offset in the part, readable by eye."""
    return f"{stem}__x{x0}_y{y0}{suffix}"


def _fragment(box: Box, tile: tuple[int, int, int, int]) -> tuple[Box | None, bool]:
    """The part of `box` inside `tile`, in the tile's pixels, and whether it is a sliver (see
    MIN_FRAGMENT); (None, False) where the box is not in the tile."""
    x0, y0, x1, y1 = tile
    cx1, cy1 = max(box.x1, x0), max(box.y1, y0)
    cx2, cy2 = min(box.x2, x1), min(box.y2, y1)
    if cx2 <= cx1 or cy2 <= cy1:
        return None, False
    sliver = any(
        (inside_lo > lo or inside_hi < hi)
        and inside_hi - inside_lo < min(MIN_FRAGMENT, (hi - lo) / 2)
        for lo, hi, inside_lo, inside_hi in ((box.x1, box.x2, cx1, cx2), (box.y1, box.y2, cy1, cy2))
    )
    return Box(box.class_index, cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0), sliver


def tile_boxes(
    boxes: list[Box], tiles: list[tuple[int, int, int, int]]
) -> tuple[list[list[Box]], int]:
    """Each tile's boxes, clipped to it (see MIN_FRAGMENT), and the number of slivers left
    unlabeled."""
    per_tile: list[list[Box]] = [[] for _ in tiles]
    slivers = 0
    for box in boxes:
        fragments = [(i, *_fragment(box, tile)) for i, tile in enumerate(tiles)]
        found = [(i, f, sliver) for i, f, sliver in fragments if f is not None]
        kept = [(i, f) for i, f, sliver in found if not sliver]
        if not kept and found:  # every fragment a sliver: the largest stays labeled
            i, f, _ = max(
                found, key=lambda item: (item[1].x2 - item[1].x1) * (item[1].y2 - item[1].y1)
            )
            kept = [(i, f)]
        slivers += len(found) - len(kept)
        for i, f in kept:
            per_tile[i].append(f)
    return per_tile, slivers


@dataclass(frozen=True)
class TileOrigin:
    """Where a tile of a tiled dataset comes from."""

    part: str  # the source image's file name
    split: str
    x0: int
    y0: int
    x1: int
    y1: int
    part_defective: bool  # the source image had a labeled box (on this tile or another)


def dataset_tile(root: Path) -> TileSpec | None:
    """The grid a dataset's parts were cut by (its data.yaml's), None for whole images."""
    from inspection.tiling import TileSpecError

    path = root / "data.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    try:
        return TileSpec.from_json(data.get(DATA_YAML_TILE_KEY) if isinstance(data, dict) else None)
    except TileSpecError as exc:
        raise UserError(f"{path}: {exc}") from exc


def grid_mismatch(model_tile: TileSpec | None, data_tile: TileSpec | None, data: str) -> str | None:
    """Why a dataset's figures are not those of the model's stations, or None. A dataset of
    whole images is judged in the model's own grid (the engine cuts each part as a station
    does); one cut into other tiles is judged tile image by tile image, as a station run with
    `--tile` of the dataset's grid would judge, not as the model's own stations do."""
    if data_tile is None or data_tile == model_tile:
        return None
    again = f"--tile {model_tile.option()}" if model_tile else "no --tile"
    return (
        f"{data!r} is cut into {data_tile.describe()}, but the model's stations judge "
        f"{judged_in(model_tile)}: these figures are those of stations run with --tile "
        f"{data_tile.option()}. For the model's own, import the images again with {again}"
    )


def refuse_tiled_for_classifier(root: Path, name: str, doing: str) -> None:
    """A part classifier judges a whole part (and crops of it): trained or evaluated on a
    dataset's tiles, it learned, and was scored on, pieces no station gives it."""
    tile = dataset_tile(root)
    if tile is not None:
        raise UserError(
            f"{name!r} is cut into {tile.describe()}, and a part classifier judges whole parts: "
            f"{doing} it on a dataset imported without --tile (the same labeled images)"
        )


def tile_origins(root: Path) -> dict[str, TileOrigin] | None:
    """Each tile image's part, by the tile's file name; None for a dataset of whole images."""
    if dataset_tile(root) is None:
        return None
    path = root / TILE_MAP
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {
            row["tile"]: TileOrigin(
                row["part"],
                row["split"],
                int(row["x0"]),
                int(row["y0"]),
                int(row["x1"]),
                int(row["y1"]),
                row["part_defective"] == "1",
            )
            for row in rows
        }
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"the tiled dataset in {root} has no readable {TILE_MAP} ({exc}): import it again"
        ) from exc


def group_by_part(
    images: list[Path], origins: dict[str, TileOrigin]
) -> list[tuple[str, bool, list[int]]]:
    """The tiles of a split grouped by part: (part, defective, indices into `images`), parts in
    the order their first tile comes."""
    groups: dict[str, tuple[str, bool, list[int]]] = {}
    for index, image in enumerate(images):
        origin = origins.get(image.name)
        if origin is None:
            raise UserError(
                f"tile {image.name} is not in the dataset's {TILE_MAP}: import the dataset again"
            )
        groups.setdefault(origin.part, (origin.part, origin.part_defective, []))[2].append(index)
    return list(groups.values())


@dataclass
class _Tile:
    name: str
    box: tuple[int, int, int, int]
    boxes: list[Box]


def _write_tiles(
    image: LabeledImage, folder: Path, labels: Path, spec: TileSpec, high_bit_depth: bool
) -> tuple[list[_Tile], int]:
    """Cut one labeled image into tiles under `folder` (PNG, lossless: a JPEG encoded again
    would blur the few pixels tiling is for) with their label files under `labels`; the tiles
    and the number of slivers left unlabeled. An image no larger than a tile is its one tile,
    its file placed as whole images are. ValueError where its pixels cannot be read."""
    grid = tile_grid(image.width, image.height, spec)
    per_tile, slivers = tile_boxes(image.boxes, grid)
    stem = image.path.stem
    tiles: list[_Tile] = []
    if len(grid) == 1:
        if high_bit_depth:
            target = folder / tile_name(stem, 0, 0)
            _write_8_bit(image.path, target, image.width, image.height)
        else:
            target = folder / tile_name(stem, 0, 0, image.path.suffix)
            _place(image.path, target)
        tiles.append(_Tile(target.name, grid[0], per_tile[0]))
    else:
        try:
            decoded = decode_image(image.path.read_bytes())
        except (OSError, ImageDecodeError) as exc:
            raise ValueError(str(exc)) from exc
        if (decoded.width, decoded.height) != (image.width, image.height):
            # (The decoder turns an image as its EXIF orientation says: its boxes would not fit.)
            raise ValueError(
                f"decoded as {decoded.width}x{decoded.height}, stored as "
                f"{image.width}x{image.height} (an EXIF orientation): its boxes would not fit"
            )
        folder.mkdir(parents=True, exist_ok=True)
        for (x0, y0, x1, y1), boxes in zip(grid, per_tile, strict=True):
            name = tile_name(stem, x0, y0)
            Image.fromarray(decoded.source[y0:y1, x0:x1]).save(folder / name, format="PNG")
            tiles.append(_Tile(name, (x0, y0, x1, y1), boxes))
    labels.mkdir(parents=True, exist_ok=True)
    for tile in tiles:
        width, height = tile.box[2] - tile.box[0], tile.box[3] - tile.box[1]
        (labels / f"{Path(tile.name).stem}.txt").write_text(
            "".join(_yolo_line(b, width, height) + "\n" for b in tile.boxes)
        )
    return tiles, slivers


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


# Where a source holds at least this many defective parts, test gets one as train and val do
# (and a good part where it holds two): a few dozen parts split by hash alone often left test
# empty, and the first model's `defects evaluate --split test` was refused.
TEST_NEEDS_DEFECTS = 3


def fill_splits(images: list[LabeledImage]) -> dict[str, str]:
    """Each image's split by its name's hash (an image keeps its split from one export to the
    next), then one image moved where a split lacks what retraining needs: a defect to learn
    from in train, a defect to validate on and a good part to count false calls on in val,
    and, from `TEST_NEEDS_DEFECTS` defective parts, a defect and a good part (where there are
    two) to test on. (By hash alone, a few dozen reviewed parts often left val empty, and
    training refused the export of reviews it had just been told to retrain on.) Only the
    images that must move do: the others keep their hash's split, so a part tested on is not
    trained on when the source is imported again with more images."""
    split = {i.path.name: _hash_split(i.path.name) for i in images}
    defective = sorted(i.path.name for i in images if i.boxes)
    good = sorted(i.path.name for i in images if not i.boxes)
    # The splits that need one of each pool, the first served first.
    test_too = len(defective) >= TEST_NEEDS_DEFECTS
    needing = {
        "defective": ("train", "val") + ("test",) * test_too,
        "good": ("val",) + ("test",) * (test_too and len(good) >= 2),
    }

    def give(target: str, kind: str, donors: tuple[str, ...]) -> None:
        pool = defective if kind == "defective" else good
        if target not in needing[kind] or any(split[n] == target for n in pool):
            return
        held = {donor: [n for n in pool if split[n] == donor] for donor in donors}
        # A donor with one to spare first; else one that needs it less than target does.
        for donor in donors:
            if len(held[donor]) > (donor in needing[kind]):
                split[held[donor][0]] = target
                return
        for donor in donors:
            ranks = needing[kind]
            if held[donor] and ranks.index(donor) > ranks.index(target):
                split[held[donor][0]] = target
                return

    give("train", "defective", ("test", "val"))
    give("val", "defective", ("test", "train"))
    give("val", "good", ("test", "train"))
    give("test", "defective", ("train", "val"))
    give("test", "good", ("train", "val"))
    return split


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
    tile: TileSpec | None = None,
) -> ImportReport:
    """Convert, check and register a labeled dataset (cut into tiles by `tile`'s grid where
    given); returns what was imported and what was not."""
    if source_format not in READERS:
        raise UserError(f"unknown format {source_format!r}; choose voc, yolo, coco or deeppcb")
    if not src.exists():
        raise UserError(f"source not found: {src}")
    mode = src.stat().st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):  # (coco said "[Errno 20] Not a directory")
        raise UserError(f"{src} is not a folder or a file: {file_kind(mode)}")
    if source_format != "coco" and not stat.S_ISDIR(mode):  # (only COCO's JSON is one file)
        # (It was said to have no annotations folder, or no data.yaml, as if it were a folder.)
        raise UserError(
            f"{src} is a file, not a folder: a {source_format} dataset is a folder; "
            "give the folder that holds it"
        )
    check_dataset_name(name)
    existing = session.scalars(select(Dataset).where(Dataset.name == name)).first()
    if existing is not None and not replace:
        raise UserError(f"dataset {name!r} already exists (use --replace to import it again)")
    if source_format == "coco":  # (a CVAT subset that names no split needs --splits)
        class_names, images, issues = read_coco(src, classes, splits_given=bool(splits_dir))
    else:
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
        tile,
    )


MAX_NAME = 100


def _no_usable_images(src: Path | str, issues: list[ImportIssue]) -> str:
    """The error of an import that kept no image, with its first problem as written in the
    report (it was shown as the issue's repr, or as "e.g. []" where there was none)."""
    if not issues:
        return f"no usable images in {src}"
    return f"no usable images in {src} ({len(issues)} problems, e.g. {issues[0]})"


def check_folder_name(name: str, what: str) -> None:
    """A dataset's, a model version's or a training run's name is its folder in the store: one
    plain folder name, so that no name can reach outside the store or stand for the store
    itself. (".." once passed the old check of a dataset name's characters alone, and
    importing under it deleted the whole data folder.)"""
    if len(name) > MAX_NAME:
        raise UserError(f"{what} name is {len(name)} characters long; at most {MAX_NAME}")
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UserError(f"{what} name {name!r} may hold only letters, digits, '-', '_' and '.'")
    if name.startswith("."):
        raise UserError(f"{what} name {name!r} may not start with '.'")


def check_dataset_name(name: str) -> None:
    check_folder_name(name, "dataset")


def _same_bytes_warnings(images: list[LabeledImage]) -> list[ImportIssue]:
    """Images whose bytes are another's: one in two splits measures the model on what it
    learned, and stations judge all copies as one part (they are known by content). Warned
    about, all imported (DeepPCB holds three identical templates under three names)."""
    first_of: dict[str, LabeledImage] = {}
    warnings = []
    for image in images:
        digest = hashlib.sha256(image.path.read_bytes()).hexdigest()
        first = first_of.setdefault(digest, image)
        if first is image:
            continue
        where = (
            f"in {first.split}, this one in {image.split}: the model is measured on an image "
            "it learned from"
            if first.split != image.split
            else f"both in {image.split}"
        )
        warnings.append(
            ImportIssue(
                image.path.name, f"the same bytes as {first.path.name} ({where})", left_out=False
            )
        )
    return warnings


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
    tile: TileSpec | None = None,
) -> ImportReport:
    """Check labeled images, lay them out for training and register the dataset. With `tile`,
    each image (a part) is cut into tiles by that grid, all in the part's own split (a part's
    tiles in two splits would measure the model on what it learned).

    Laid out beside the store's folder first: a disk that fills part way (or a file that
    cannot be read) registers nothing and leaves the dataset as it was. The half-written copy
    is removed then, not left to hold the full disk's space, and the error says so in one
    line (it was the system's bare "[Errno 28]")."""
    stage = _new_stage(datasets_dir, name)
    try:
        return _write_dataset(
            session,
            name,
            source,
            source_format,
            class_names,
            images,
            issues,
            datasets_dir,
            split_of,
            existing,
            tile,
            stage,
        )
    except (UserError, KeyboardInterrupt):
        # (One said once the copy was written, a moved dataset's data.yaml that could not be
        # rewritten, left the copy beside the datasets; so did a Ctrl-C during the copy.)
        _remove_stage(stage, name)
        raise
    except OSError as exc:
        _remove_stage(stage, name)
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        raise UserError(
            f"dataset {name} not written: {exc.strerror or exc}"
            + (f" ({where})" if where else "")
            + f"; nothing is registered and dataset {name} is as it was (datasets are written "
            f"in {datasets_dir}): {write_advice(exc)}"
            + ("" if read_only_mount(exc) else "make that folder writable or ")
            + "set DEFECTS_DATA_DIR to another place, then run the same command again"
        ) from exc


# A stage folder left by an import that stopped on another machine (the data folder shared) is
# removed by an import of its name once it is this old: its process cannot be asked about.
STAGE_MAX_AGE_S = 24 * 3600


def _new_stage(datasets_dir: Path, name: str) -> Path:
    """The folder an import lays its copy out in, its own: two imports of one name at once
    shared one `.NAME.importing`, and the second deleted the first's half-built copy (both
    failed, each with a misleading error). Named by the machine and process that write it, so
    that a leftover can be told dead (`_remove_dead_stages`)."""
    host = socket.gethostname() or "host"
    return datasets_dir / f".{name}.importing-{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_dead_stages(datasets_dir: Path, name: str, stage: Path) -> None:
    """Stage folders of `name` that earlier imports left (a kill -9, a power cut), removed so as
    not to hold the disk's space: only those whose process is gone on this machine, or older
    than STAGE_MAX_AGE_S (another machine's, or an older version's `.NAME.importing`). Another
    live import's is never touched."""
    pattern = re.compile(rf"\.{re.escape(name)}\.importing(?:-(.+)-(\d+)-[0-9a-f]+)?")
    here = socket.gethostname() or "host"
    for folder in datasets_dir.glob(f".{name}.importing*"):
        match = pattern.fullmatch(folder.name)
        if match is None or folder == stage:
            continue
        host, pid = match.group(1), match.group(2)
        try:
            dead = (host == here and not _process_alive(int(pid))) or (
                time.time() - folder.lstat().st_mtime > STAGE_MAX_AGE_S
            )
        except OSError:
            continue  # (gone meanwhile: removed by another import)
        if dead:
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stage(stage: Path, name: str) -> None:
    """A failed import's half-written copy, removed so as not to hold the disk's space (only
    under a name that passed the check: another is no folder of the store)."""
    try:
        check_dataset_name(name)
    except UserError:
        return
    shutil.rmtree(stage, ignore_errors=True)


def _write_dataset(
    session: Session,
    name: str,
    source: str,
    source_format: str,
    class_names: list[str],
    images: list[LabeledImage],
    issues: list[ImportIssue],
    datasets_dir: Path,
    split_of: dict[str, str] | None,
    existing: Dataset | None,
    tile: TileSpec | None,
    stage: Path,
) -> ImportReport:
    """`write_dataset`'s work, laid out in its stage folder."""
    src = source
    check_dataset_name(name)
    root = datasets_dir / name
    if not class_names:
        raise UserError(f"no classes found in {src}")
    accepted: list[LabeledImage] = []
    hashed: list[LabeledImage] = []  # (their split by name: neither the source nor --splits said)
    # By stem, not file name: labels are written as <stem>.txt, so dup.png and dup.jpg would
    # share one (a good part trained as defective, or a defect as background).
    accepted_of_stem: dict[str, Path] = {}
    high_bit_depth: set[Path] = set()
    # Images of a type the training library does not read (a station's PGM/PPM, reviewed and
    # exported): copied as they were, training passed them over without a word.
    other_type: set[Path] = set()
    for image in images:
        label = image.path.name
        kept = accepted_of_stem.get(image.path.stem)
        if kept is not None:
            issues.append(
                ImportIssue(
                    label,
                    _duplicate_name_reason(image.path, kept, src)
                    if kept.name == label
                    else _same_stem_reason(image.path, kept, kept.name),
                )
            )
            continue
        mode = image.mode
        if mode is None:
            try:
                image.width, image.height, mode = _image_info(image.path, image.boxes_as_judged)
            except ValueError as exc:
                issues.append(ImportIssue(label, str(exc)))
                continue
        clipped = [_clip_rounding(b, image.width, image.height) for b in image.boxes]
        image.boxes = list(dict.fromkeys(clipped))
        if len(image.boxes) < len(clipped):
            # (ultralytics drops them too, so its counts and the import's disagreed silently.)
            issues.append(
                ImportIssue(
                    label,
                    f"{len(clipped) - len(image.boxes)} box(es) given twice: kept once",
                    left_out=False,
                )
            )
        problems = [
            p
            for b in image.boxes
            if (p := _check_box(b, image.width, image.height, len(class_names)))
        ]
        other_size = (
            f"its annotation gives its size as {image.annotated_size[0]}x"
            f"{image.annotated_size[1]}, the image is {image.width}x{image.height}"
            if image.boxes
            and image.annotated_size is not None
            and image.annotated_size != (image.width, image.height)
            else ""
        )
        if problems:
            issues.append(ImportIssue(label, "; ".join(problems + [other_size] * bool(other_size))))
            continue
        if other_size:
            # (Imported: the size may be all that is wrong. Boxes drawn on a resized copy
            # would sit elsewhere on this one, and were taken without a word.)
            issues.append(
                ImportIssue(
                    label,
                    f"{other_size}: its boxes were taken as drawn on this image; if they "
                    "were drawn on a copy of another size, they are misplaced here",
                    left_out=False,
                )
            )
        if split_of is not None:
            # By its name, or by its stem as VOC's ImageSets/Main lists write it: a list of
            # stems left every image out as "not listed in any split file".
            listed_in = {split_of[k] for k in (label, image.path.stem) if k in split_of}
            if len(listed_in) > 1:
                issues.append(
                    ImportIssue(
                        label,
                        f"listed in {' and '.join(f'{s}.txt' for s in sorted(listed_in))} (by "
                        "its name and by its stem): each image belongs to one split",
                    )
                )
                continue
            image.split = next(iter(listed_in), None)
            if image.split is None:
                issues.append(ImportIssue(label, "not listed in any split file"))
                continue
        if image.split is None:
            hashed.append(image)
            image.split = _hash_split(label)
        accepted_of_stem[image.path.stem] = image.path
        if mode in HIGH_BIT_DEPTH_MODES:
            high_bit_depth.add(image.path)
        elif image.path.suffix.lower() not in IMAGE_SUFFIXES:
            other_type.add(image.path)
        accepted.append(image)
    if split_of is not None:
        missing = sorted(set(split_of) - {n for i in images for n in (i.path.name, i.path.stem)})
        issues += [ImportIssue(m, "listed in a split file but not in the source") for m in missing]
    # Split by name's hash where neither the source nor --splits says, then one part moved
    # where a split lacks what training needs (as an export of reviews does): a few parts
    # imported without --splits all fell in train, and training refused them for no val.
    filled = fill_splits(hashed)
    for image in hashed:
        image.split = filled[image.path.name]
    issues += _same_bytes_warnings(accepted)
    if not accepted:
        raise UserError(_no_usable_images(src, issues))

    if root.resolve().parent != datasets_dir.resolve():
        raise UserError(f"dataset name {name!r} does not name a folder of the dataset store")
    # Written beside the store's folder first, then put in its place: an import that fails
    # half way (a full disk, a bad file) leaves the dataset as it was, and one that replaces a
    # dataset from that dataset's own folder still finds its images (deleting the old folder
    # first once lost them both).
    if datasets_dir.is_dir():
        _remove_dead_stages(datasets_dir, name, stage)
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    converted: list[str] = []
    retyped: list[str] = []  # (of `other_type`, stored as PNG)
    tile_rows: list[tuple[str, str, str, int, int, int, int, int, str]] = []
    part_rows: list[tuple[str, str, str, str]] = []  # PART_MAP's, for reviewed parts
    sliced: list[str] = []  # parts with a sliver of a box left unlabeled in a tile
    n_slivers = 0
    for image in accepted:
        assert image.split is not None
        if tile is not None:
            high = image.path in high_bit_depth
            try:
                tiles, slivers = _write_tiles(
                    image,
                    stage / "images" / image.split,
                    stage / "labels" / image.split,
                    tile,
                    high or image.path in other_type,
                )
            except ValueError as exc:
                issues.append(ImportIssue(image.path.name, f"cannot cut into tiles: {exc}"))
                continue
            if high:
                converted.append(image.path.name)
            elif image.path in other_type:
                retyped.append(image.path.name)
            if slivers:
                n_slivers += slivers
                sliced.append(image.path.name)
            for t in tiles:
                lists[image.split].append(t.name)
                counts[image.split].update(
                    images=1, boxes=len(t.boxes), good_tiles=int(not t.boxes)
                )
                tile_rows.append(
                    (
                        t.name,
                        image.split,
                        image.path.name,
                        *t.box,
                        int(bool(image.boxes)),
                        image.original_name or "",
                    )
                )
            counts[image.split].update(parts=1, good=int(not image.boxes))
            if image.part_id is not None:
                part_rows.append(
                    (image.path.name, image.split, str(image.part_id), image.original_name or "")
                )
            continue
        target = stage / "images" / image.split / image.path.name
        if image.path in high_bit_depth or image.path in other_type:
            # Stored as stations decode it: training saw a 12-bit camera's image nearly black,
            # and a PGM/PPM not at all.
            high = image.path in high_bit_depth
            target = target.with_suffix(".png")
            try:
                _write_8_bit(image.path, target, image.width, image.height)
            except ValueError as exc:
                into = "8 bits" if high else "PNG"
                issues.append(ImportIssue(image.path.name, f"cannot convert to {into}: {exc}"))
                continue
            (converted if high else retyped).append(image.path.name)
        else:
            _place(image.path, target)
        label_file = stage / "labels" / image.split / f"{image.path.stem}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text(
            "".join(_yolo_line(b, image.width, image.height) + "\n" for b in image.boxes)
        )
        lists[image.split].append(target.name)
        counts[image.split].update(images=1, boxes=len(image.boxes), good=int(not image.boxes))
        if image.part_id is not None:
            part_rows.append(
                (target.name, image.split, str(image.part_id), image.original_name or "")
            )
    n_imported = sum(len(names) for names in lists.values())
    if not n_imported:
        shutil.rmtree(stage)
        raise UserError(_no_usable_images(src, issues))
    if n_slivers:
        issues.append(
            ImportIssue(
                _some_files(sliced),
                f"{n_slivers} fragment(s) of a box cut by a tile's edge, under "
                f"{MIN_FRAGMENT:g} px across the cut, left unlabeled in that tile (the box is "
                "labeled in the tiles that hold the rest of it)",
                left_out=False,
            )
        )
    if converted:
        issues.append(
            ImportIssue(
                _some_files(converted),
                f"{len(converted)} image(s) of more than 8 bits (16-bit or floating point) "
                "stored as 8-bit PNG, scaled as stations decode them, so that training sees "
                "what stations see",
                left_out=False,
            )
        )
    if retyped:
        issues.append(
            ImportIssue(
                _some_files(retyped),
                f"{len(retyped)} image(s) of a type the training library does not read "
                "(a camera's PGM/PPM) stored as PNG, as stations decode them, so that training "
                "sees them",
                left_out=False,
            )
        )
    replaced = datasets_dir / f".{name}.replaced"
    moved: list[tuple[Path, Path]] = []  # (where a folder is now, where it was), in order
    # From here to the commit or the rollback, one import of `name` at a time (the copy above
    # ran beside others): two at once shared `.NAME.replaced`, each deleted the other's old data
    # set aside, and the rollback of one moved the other's new copy away.
    # (One transaction importing `name` twice holds the lock once: it waited for itself.)
    held = session.info.setdefault(DATASET_LOCKS, {})
    lock = None if name in held else _lock_dataset_name(datasets_dir, name)
    held.setdefault(name, lock)
    _settled_with_the_transaction(session, name, moved, replaced, stage, datasets_dir, lock)
    # (As registered now: an import that held the lock meanwhile may have replaced it.)
    existing = (
        session.scalars(
            select(Dataset).where(Dataset.name == name).execution_options(populate_existing=True)
        ).first()
        if existing is not None
        else None
    )
    if name not in session.info.setdefault(SET_ASIDE, set()):  # (not this transaction's own)
        _refuse_data_left_aside(replaced, root, name)
    _remove_removed_leftovers(datasets_dir, name)
    kept_as = _name_to_keep(session, existing, datasets_dir, name)
    if kept_as is not None:
        issues.append(ImportIssue(name, kept_as[1], left_out=False))
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
    if tile is not None:
        data_yaml[DATA_YAML_TILE_KEY] = tile.to_json()
        with (stage / TILE_MAP).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(TILE_MAP_COLUMNS)
            writer.writerows(sorted(tile_rows))
    if part_rows:
        with (stage / PART_MAP).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(PART_MAP_COLUMNS)
            writer.writerows(sorted(part_rows))
    (stage / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False))
    left_out = [issue for issue in issues if issue.left_out]
    warnings = [issue for issue in issues if not issue.left_out]
    (stage / "import_report.txt").write_text(
        f"source: {src}\nformat: {source_format}\n"
        + (
            f"imported: {n_imported} images"
            if tile is None
            else f"imported: {sum(counts[s]['parts'] for s in SPLITS)} images (parts) cut into "
            f"{n_imported} tiles ({tile.describe()})"
        )
        + f" ({len(converted)} converted to 8-bit PNG)\n"
        f"left out: {len(left_out)}\n"
        + "".join(f"{issue}\n" for issue in left_out)
        + f"warnings: {len(warnings)}\n"
        + "".join(f"{issue}\n" for issue in warnings)
    )
    was_named, was_at = (existing.name, existing.root_path) if existing else ("", "")
    try:
        if kept_as is not None and existing is not None:
            _keep_old_dataset(session, existing, kept_as[0], root, datasets_dir, moved)
        _sync_tree(stage)
        if root.exists():
            if replaced.exists():  # (set aside by this transaction's earlier import of `name`)
                shutil.rmtree(replaced)
            root.rename(replaced)
            moved.append((replaced, root))
            session.info[SET_ASIDE].add(name)
        stage.rename(root)
        moved.append((root, stage))
        _sync_names(datasets_dir)
    except OSError as exc:
        if existing is not None:  # (its row is rolled back with the import's transaction)
            existing.name, existing.root_path = was_named, was_at
        try:
            _put_back(moved, datasets_dir, name, exc)
        finally:
            moved.clear()  # (put back, or said where each folder is: not again at the rollback)
        raise
    if kept_as is not None:
        existing = None  # the new data is a dataset of its own
    # Tiled: images and boxes are the tiles' (what training reads), good and parts count parts
    # (what calibration and evaluation count).
    keys = ("images", "boxes", "good") + (("parts", "good_tiles") if tile is not None else ())
    split_counts = {s: {k: int(counts[s][k]) for k in keys} for s in SPLITS}
    dataset = existing or Dataset(name=name)
    dataset.source = src
    dataset.source_format = source_format
    dataset.root_path = str(root.resolve())
    dataset.classes = class_names
    dataset.split_counts = split_counts
    session.add(dataset)
    try:
        session.flush()
    except IntegrityError as exc:
        # (Another import of the same name, started before this one looked, registered it
        # first: a traceback of the driver's error. The rollback puts the folders back.)
        raise UserError(
            f"dataset {name} not written: the database refused its row ({exc.orig}); nothing "
            f"is registered by this import and its folder is left as it was: if another "
            f"import of {name} ran meanwhile, run the same command again with --replace"
        ) from exc
    # Warnings first: a listing cut short (the CLI shows 20) keeps them in view.
    return ImportReport(
        name, root, class_names, split_counts, warnings + left_out, len(converted), tile
    )


# Syncs in flight at once while an import's files are synced: waits on the disk, not work for
# the cores, so more than the machine's cores.
SYNC_THREADS = 16


def _sync_tree(folder: Path) -> None:
    """Every file under `folder` to disk, then each folder's entries, deepest first. The
    dataset's row is committed once its folder takes its name: renamed unsynced, a power cut
    after the import said so could leave the dataset registered with its images, labels or
    data.yaml empty or gone. The files are synced by several threads at once: the file system
    commits their syncs together, where one after another each waited for its own commit (on
    300 NEU-DET images, 0.06 to 0.16 s against 1.3 to 3.0 s)."""
    from concurrent.futures import ThreadPoolExecutor

    folders: list[Path] = []
    files: list[Path] = []
    for top, _, names in os.walk(folder):
        folders.append(Path(top))
        files.extend(Path(top) / name for name in names)
    with ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="sync") as pool:
        for _ in pool.map(sync_file, files):  # (an error is raised here, the rest cancelled)
            pass
    for each in reversed(folders):  # (os.walk gives a folder before those in it)
        sync_folder(each)


def _sync_names(datasets_dir: Path) -> None:
    """The store's entries (a dataset's folder renamed into place, an old one moved aside) to
    disk, and the store's own in its parent (an import may have made the store)."""
    sync_folder(datasets_dir)
    sync_folder(datasets_dir.parent)


def _name_to_keep(
    session: Session, existing: Dataset | None, datasets_dir: Path, name: str
) -> tuple[str, str] | None:
    """The name to keep a replaced dataset under, and the line that says so, where model versions
    were trained on it: replaced in place, they pointed at data they never saw."""
    if existing is None or existing.id is None:
        return None
    trained = session.scalars(
        select(ModelVersion.name).where(ModelVersion.dataset_id == existing.id)
    ).all()
    if not trained:
        return None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    kept_name = f"{name}-before-{stamp}"
    taken = set(session.scalars(select(Dataset.name).where(Dataset.name.like(f"{kept_name}%"))))
    n = 1
    while kept_name in taken or (datasets_dir / kept_name).exists():
        n += 1
        kept_name = f"{name}-before-{stamp}-{n}"
    old_root = located_dataset(existing.root_path, datasets_dir)
    kept_root = (
        datasets_dir / kept_name
        if old_root.resolve() == (datasets_dir / name).resolve()
        else old_root
    )
    return kept_name, (
        f"model version(s) {_some_files(sorted(trained))} were trained on the data this import "
        f"replaces: it is kept as dataset {kept_name} (folder {kept_root}), which they name "
        f"now; the new data is dataset {name}"
    )


def _settled_with_the_transaction(
    session: Session,
    name: str,
    moved: list[tuple[Path, Path]],
    replaced: Path,
    stage: Path,
    datasets_dir: Path,
    lock: IO[bytes] | None,
) -> None:
    """The replaced data (`replaced`) removed once the import's row is committed, and each
    folder in `moved` put back where its transaction is rolled back instead, the new copy
    (`stage`) then removed, as after any failed import. The old data was
    removed before the commit: a commit that failed (a locked database, a constraint) or a stop
    (Ctrl-C) left the row describing the old data over the new folder, the old data gone.
    Folders that cannot be put back are said by the error `session_scope` raises then, with
    where each is (ROLLBACK_FAILURES). The import's `lock` on its name is let go once either is
    done."""
    pending, committing = [True], []

    def committed(session: Session) -> None:
        if pending:
            pending.clear()
            moved.clear()
            committing.append(True)

    def ended(session: Session, transaction: SessionTransaction) -> None:
        # Once the committed transaction is closed, not in `after_commit`: a Ctrl-C there,
        # while a large dataset was removed, had the rollback after it refused by the session
        # (a traceback, "in 'committed' state"), not said as "interrupted".
        if committing and transaction.parent is None:
            committing.clear()
            # (The new data is in place and synced: the old data's removal failing is no
            # reason to undo it, and the next import removes what is left. Renamed first: a
            # `.NAME.replaced` left is data that was never known replaced, which none removes.)
            removed = replaced.with_name(
                f"{replaced.name[: -len('.replaced')]}.removed-{secrets.token_hex(4)}"
            )
            try:
                replaced.rename(removed)
            except FileNotFoundError:
                pass  # (nothing replaced)
            except OSError as exc:
                logger.warning("%s could not be removed: %s", replaced, exc)
            try:
                shutil.rmtree(removed, ignore_errors=True)
            finally:  # (a Ctrl-C in it too)
                _let_go(session, name, lock)

    def rolled_back(session: Session, previous: SessionTransaction) -> None:
        if pending and not previous.nested:  # (a savepoint's rollback undoes less)
            pending.clear()
            try:
                _rename_back(moved, datasets_dir)
                shutil.rmtree(stage, ignore_errors=True)
            except (OSError, yaml.YAMLError) as failed:
                where, reason = ", ".join(f"{n} was {w}" for n, w in moved), str(failed)
                logger.error(
                    "the import's folders could not be put back as they were (%s): %s; put "
                    "them back by hand (and the `path` of their data.yaml)",
                    failed,
                    where,
                )

                def not_put_back(exc: BaseException) -> UserError:
                    return UserError(
                        f"dataset {name} not written, and its folders could not be put back as "
                        f"they were ({reason}): {where}; put them back by hand (and the `path` "
                        f"of their data.yaml), then run the same command again (the import "
                        f"failed with: {exc or type(exc).__name__})"
                    )

                session.info.setdefault(ROLLBACK_FAILURES, []).append(not_put_back)
            finally:
                moved.clear()
                _let_go(
                    session, name, lock
                )  # (the next import of `name` finds the folders as they are now)

    event.listen(session, "after_commit", committed)
    event.listen(session, "after_transaction_end", ended)
    event.listen(session, "after_soft_rollback", rolled_back)


# session.info's names whose lock (and `.NAME.replaced`) this session's transaction holds.
DATASET_LOCKS, SET_ASIDE = "dataset_name_locks", "dataset_set_aside"


def _lock_dataset_name(datasets_dir: Path, name: str) -> IO[bytes]:
    """An exclusive lock on `.NAME.lock` in the store, waited for (and said) while another
    import of `name` holds it, let go by `_let_go` (or when its process ends, killed too). A
    lock on the folder, not a row lock in the database: the folders are what two imports fight
    over, and a store is this machine's (README: each machine keeps its own DEFECTS_DATA_DIR),
    while machines that share one database each import into their own; a dataset's row may not
    exist yet to lock, and SQLite has no lock of one name."""
    import fcntl

    path, said = datasets_dir / f".{name}.lock", False
    while True:
        lock = path.open("ab")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    print(
                        f"waiting for the other import of dataset {name} to finish ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    said = True
                fcntl.flock(lock, fcntl.LOCK_EX)
            # (Removed by the import that held it meanwhile: the next one locks the new file.)
            if path.exists() and os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        except BaseException:  # (a Ctrl-C while waiting)
            lock.close()
            raise
        lock.close()


def _let_go(session: Session, name: str, lock: IO[bytes] | None) -> None:
    """The lock of `_lock_dataset_name` let go, its file removed first (while still held, so
    that no import locks a file that is then removed), not left beside the datasets."""
    session.info.get(DATASET_LOCKS, {}).pop(name, None)
    session.info.get(SET_ASIDE, set()).discard(name)
    if lock is None:
        return
    with contextlib.suppress(OSError):  # (a lock file left is harmless: the next one locks it)
        os.unlink(lock.name)
    lock.close()


def _refuse_data_left_aside(replaced: Path, root: Path, name: str) -> None:
    """Refused, in one line, where `.NAME.replaced` is there: an import that could not put its
    folders back left it (its error named it), or one was killed before its commit, and it may
    be the only copy of the dataset's data before that import. An import replacing the dataset
    deleted it to make room for its own."""
    if replaced.exists() or replaced.is_symlink():
        raise UserError(
            f"dataset {name} not written: {replaced} holds data an earlier import of {name} "
            f"set aside and did not put back (perhaps the dataset's only copy of its data "
            f"before that import): move it back to {root} by hand (first moving aside what is "
            f"there) or delete it if it is not needed, then run the same command again"
        )


def _remove_removed_leftovers(datasets_dir: Path, name: str) -> None:
    """What imports of `name` began to remove after their commit and could not finish
    (`.NAME.removed-RANDOM`), removed: data replaced by a committed import, needed by none."""
    for folder in datasets_dir.glob(f".{glob.escape(name)}.removed-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _rename_back(moved: list[tuple[Path, Path]], datasets_dir: Path) -> None:
    """Each folder in `moved` renamed back, last first, its data.yaml naming it again; each
    is taken off `moved` once back, so that where one fails, `moved` names those not back
    (all were named, those back included, as where they were not)."""
    any_moved = bool(moved)
    while moved:
        now, was = moved[-1]
        now.rename(was)
        moved.pop()
        data_yaml = was / "data.yaml"  # (a folder kept aside had its data.yaml name it)
        data = yaml.safe_load(data_yaml.read_text()) if data_yaml.is_file() else None
        if isinstance(data, dict) and data.get("path") == str(now.resolve()):
            data["path"] = str(was.resolve())
            _rewrite_yaml(data_yaml, data)
    try:
        if any_moved:
            _sync_names(datasets_dir)
    except OSError:
        pass  # (the disk that failed the import: the names are right until a power cut)


def _put_back(moved: list[tuple[Path, Path]], datasets_dir: Path, name: str, exc: OSError) -> None:
    """Each folder an import moved, renamed back, last first, where a step after the first move
    failed (a sync, EIO): the error said dataset `name` was as it was while the new folder was
    in its place and the old one aside, under a name no row named. What cannot be put back is
    said in one line, with where each folder is."""
    try:
        _rename_back(moved, datasets_dir)
    except (OSError, yaml.YAMLError) as failed:
        raise UserError(
            f"dataset {name} not written: {exc.strerror or exc}; nothing is registered, "
            f"but its folders could not be put back as they were ({failed}): "
            + ", ".join(f"{n} was {w}" for n, w in moved)
            + f"; {write_advice(exc)}put them back by hand (and the `path` of their "
            "data.yaml), then run the same command again"
        ) from exc


def _keep_old_dataset(
    session: Session,
    existing: Dataset,
    kept_name: str,
    root: Path,
    datasets_dir: Path,
    moved: list[tuple[Path, Path]],
) -> None:
    """Rename a replaced dataset and move its folder aside, so that its model versions keep it;
    the move is added to `moved`, to be put back where the import fails after it."""
    existing.name = kept_name
    session.flush()  # (before the new dataset takes its name: the name is unique)
    # (Where it is on this machine: a data folder moved since still holds it under `root`.)
    if located_dataset(existing.root_path, datasets_dir).resolve() != root.resolve():
        return  # its files are elsewhere: the import does not touch them
    kept_root = datasets_dir / kept_name
    if root.is_dir():
        root.rename(kept_root)
        moved.append((kept_root, root))
    # (Also where its folder is gone: it must not name the new data's folder.)
    existing.root_path = str(kept_root.resolve())
    data_yaml = kept_root / "data.yaml"
    if data_yaml.is_file():  # ultralytics reads the images from its `path`
        data = yaml.safe_load(data_yaml.read_text()) or {}
        data["path"] = existing.root_path
        _rewrite_yaml(data_yaml, data)
    session.flush()


def check_trainable(dataset: Dataset) -> None:
    """Training needs images in train and val: said before a model is built, not as an
    ultralytics traceback after (a dataset for calibration or evaluation alone is fine)."""
    images = {s: int(((dataset.split_counts or {}).get(s) or {}).get("images", 0)) for s in SPLITS}
    empty = [s for s in ("train", "val") if not images[s]]
    # (An export of reviews has no split lists to give: more reviewed parts are its remedy.)
    remedy = (
        "review more parts (at least two defective) and export them again"
        if dataset.source_format == "reviews"
        else "import it again with split lists that name its images"
    )
    if empty:
        found = ", ".join(f"{s} {n}" for s, n in images.items())
        raise UserError(
            f"dataset {dataset.name!r} has no {' and no '.join(empty)} images to train on "
            f"({found}): {remedy}"
        )
    if not int(((dataset.split_counts or {}).get("train") or {}).get("boxes", 0)):
        raise UserError(
            f"dataset {dataset.name!r} has no labeled defect in its train split: a model has "
            "nothing to learn from good parts alone (they serve calibration and evaluation)"
            + (f"; {remedy}" if dataset.source_format == "reviews" else "")
        )


def check_split_images(root: Path, name: str) -> None:
    """A detector trains on the train and val images on disk, which `check_trainable`'s counts
    of the import do not see: a split folder deleted or emptied since stopped the training in
    ultralytics' traceback ("images not found"), with a failed job behind it."""
    for split in ("train", "val"):
        folder = root / "images" / split
        if not folder.is_dir() or not split_image_paths(root, split):
            raise UserError(
                f"dataset {name!r} has no {split} images in {folder} (deleted or moved since "
                "it was imported): import it again with --replace (an export of reviews: "
                "export it again)"
            )


def dataset_yaml(session: Session, name: str) -> tuple[Dataset, Path]:
    """The registered dataset and its ultralytics data.yaml."""
    dataset = session.scalars(select(Dataset).where(Dataset.name == name)).first()
    if dataset is None:
        raise UserError(
            f"no dataset {name!r}; import one with `defects import voc|yolo|coco|deeppcb SRC --name {name}`"
        )
    path = located_dataset(dataset.root_path) / "data.yaml"
    if not path.is_file():
        raise UserError(f"dataset {name!r} is registered but its files are gone ({path})")
    return dataset, path


def located_dataset(root_path: str, datasets_dir: Path | None = None) -> Path:
    """A dataset's folder on this machine: where it was registered, else the folder of that
    name in this machine's datasets/ (a data folder moved to another disk, or copied to a
    training machine). There, its data.yaml is made to name that folder: ultralytics reads the
    images from its `path`, which still named the old one. Where neither holds a data.yaml, the
    recorded folder, so that a message names it."""
    recorded = Path(root_path)
    if (recorded / "data.yaml").is_file():
        return recorded
    here = same_place_under(root_path, datasets_dir or get_settings().datasets_dir, depth=1)
    data_yaml = here / "data.yaml"
    if here == recorded or not data_yaml.is_file():
        return recorded
    data = yaml.safe_load(data_yaml.read_text()) or {}
    if data.get("path") != str(here.resolve()):
        data["path"] = str(here.resolve())
        try:
            _rewrite_yaml(data_yaml, data)
        except OSError as exc:  # (it was the system's bare error, a traceback from `train`)
            raise UserError(
                f"the dataset's folder is now {here} (the data folder moved), but its "
                f"data.yaml cannot be made to name it: {exc.strerror or exc}; "
                f"{write_advice(exc)}"
                + (
                    "set DEFECTS_DATA_DIR to a copy of the data folder in a writable place"
                    if read_only_mount(exc)
                    else f"make {data_yaml} writable"
                )
                + ", then run the same command again"
            ) from exc
    return here


def _rewrite_yaml(data_yaml: Path, data: dict[str, object]) -> None:
    """A dataset's data.yaml rewritten whole or not at all (a training may be reading it), and
    synced: written in place, a full disk or a power cut left it cut short or empty, and the
    dataset no longer trained. The partial file is removed where the write fails."""
    written = data_yaml.with_name(f".data.yaml.{os.getpid()}.partial")
    try:
        written.write_text(yaml.safe_dump(data, sort_keys=False))
        replace_synced(written, data_yaml)
    except BaseException:
        written.unlink(missing_ok=True)
        raise


def split_image_paths(root: Path, split: str) -> list[Path]:
    """The images of one split of an imported dataset, in a stable order."""
    folder = root / "images" / split
    if not folder.is_dir():
        # (An import writes a split list for every split, and a folder only for images: a
        # split it put none in was said to be no split of the dataset at all.)
        if (root / "splits" / f"{split}.txt").is_file():
            raise UserError(f"the dataset's {split} split holds no image ({folder})")
        raise UserError(f"the dataset has no {split} split ({folder})")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

"""Decoding part images from the line: whatever the camera wrote, into 8-bit RGB, or a clear reason.

Pillow decodes (torchvision.io is unavailable beside a CPU-only torch). Handled: grayscale,
RGB, RGBA and palette images, 16-bit (and 12-bit-in-16) grayscale, EXIF orientation. Refused with
a reason: empty files, non-images, truncated or corrupt files, images over the pixel limit, and
(by the engine) blank frames, which would otherwise pass as good parts.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inspection.errors import StorageError
from inspection.settings import get_settings, same_place_under
from inspection.tiling import TileSpec, needs_tiling, tile_grid


def max_pixels() -> int:
    """The largest image judged or imported (`DEFECTS_MAX_MEGAPIXELS`, 64 MP by default): a
    larger one is refused before it is decoded (a decompression bomb)."""
    return get_settings().max_megapixels * 1_000_000


def allow_pixels_up_to(limit: int) -> None:
    """Pillow's own bomb limit (about 89 MP; an error at twice that) raised to ours where ours is
    higher, in this process: below it, Pillow refused what the setting lets through, and the
    training library's check of each image dropped such an image as corrupt."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limit)


# The image files the product takes: uploads, dataset imports, and the files of a folder that
# are never opened as zips (a zip appended to a JPEG opens as both).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# The files a station judges besides (uploads, and the files of a batch's folder never opened as
# zips): a camera's raw PGM/PPM (and PBM, PNM), which Pillow decodes. Not dataset imports: the
# training library reads none of them.
INSPECTED_SUFFIXES = IMAGE_SUFFIXES | {".pbm", ".pgm", ".ppm", ".pnm"}
logger = logging.getLogger(__name__)
LETTERBOX_FILL = 114  # the grey ultralytics pads with, so our inputs match its training


def file_kind(mode: int) -> str:
    """What a path is, by its `os.stat` mode, in words: "a named pipe", "a folder"..."""
    kinds = (
        (stat.S_ISREG, "a file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def not_a_file_reason(mode: int) -> str | None:
    """Why a path that is not a regular file (`os.stat`'s mode) is not read as an image, or
    None for a regular file. A read of a named pipe waits for a writer, forever where none
    comes, and a device may never end: one such entry held a whole batch, watch or import."""
    if stat.S_ISREG(mode):
        return None
    return f"not a regular file but {file_kind(mode)}: not read"


class ImageDecodeError(ValueError):
    """The file is not an image we can inspect; the message says why. `refused_over` is the
    pixel limit (`max_pixels`) an image too large was refused at: what a station records, so
    that the part is judged again at another limit without reading the message's words."""

    def __init__(self, message: str, refused_over: int | None = None) -> None:
        super().__init__(message)
        self.refused_over = refused_over


@dataclass(frozen=True)
class DecodedImage:
    # H x W (grayscale) or H x W x 3 (RGB), uint8. A grayscale camera's image stays one channel
    # until three are asked for: letterboxing one channel is half the work of three.
    source: np.ndarray

    @cached_property
    def pixels(self) -> np.ndarray:
        """H x W x 3, uint8, RGB."""
        if self.source.ndim == 2:
            return np.repeat(self.source[:, :, None], 3, axis=2)
        return self.source

    @property
    def height(self) -> int:
        return int(self.source.shape[0])

    @property
    def width(self) -> int:
        return int(self.source.shape[1])


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """High-bit-depth to 8 bits by the bits actually used (a 12-bit camera in a 16-bit file);
    a floating-point image stored 0 to 1 is scaled to 0 to 255 (truncated, it read as blank)."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
        return np.clip(finite * scale, 0, 255).astype(np.uint8)
    array = np.clip(array, 0, None).astype(np.uint32)
    shift = max(int(array.max()).bit_length() - 8, 0)
    return (array >> shift).astype(np.uint8)


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; as stored where that cannot be read. A
    damaged EXIF block (a tag of the wrong type) made Pillow's transpose raise struct and type
    errors that stopped the whole batch over one file, whose pixels were fine."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - any failure of the EXIF block: the pixels are kept
        return image


ORIENTATION_TAG = 0x0112  # EXIF's
# How each EXIF orientation that moves pixels has the decoder turn an image (`_upright`).
TURNING_ORIENTATIONS = {
    2: "mirrored left to right",
    3: "turned 180 degrees",
    4: "mirrored top to bottom",
    5: "mirrored along its diagonal",
    6: "turned 90 degrees clockwise",
    7: "mirrored along its other diagonal",
    8: "turned 90 degrees counter-clockwise",
}


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation by which the decoder turns `image` (a key of TURNING_ORIENTATIONS),
    or 1 where it is decoded as stored: a mirrored or upside-down image keeps its size, so only
    this tells that its decoded pixels are not its stored ones. Read from what was read of the
    file (a PNG's eXIf chunk after its pixel data is known only once they are decoded)."""
    try:
        # (Pillow's PNG reader decodes the whole image to look for a late eXIf chunk.)
        orientation = Image.Image.getexif(image).get(ORIENTATION_TAG, 1)
        return orientation if orientation in TURNING_ORIENTATIONS else 1
    except Exception:  # noqa: BLE001 - a damaged EXIF block: decoded as stored (`_upright`)
        return 1


def several_frames_reason(image: Image.Image) -> str | None:
    """Why a file of several pages or frames (a camera's multi-page TIFF stack, an animated
    WebP) is not one part, or None. Judged on its first page, a defect on another passed
    unseen. A camera's MPO JPEG holds its picture first and a preview or depth map after: not
    two parts."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        return f"{frames} pages or frames in one file: save one image per part"
    return None


# Formats Pillow draws by running another program on the file's contents: an uploaded
# "part.png" that held PostScript was handed to Ghostscript (where a station has it), a
# program from whoever uploaded it, which could hang the batch or worse. No camera writes them.
RUN_BY_ANOTHER_PROGRAM = {
    "EPS": "not an image file (PostScript, which only Ghostscript can draw: not run)",
}


def decode_image(data: bytes, limit: int | None = None) -> DecodedImage:
    if not data:
        raise ImageDecodeError(EMPTY_ERROR)
    limit = limit or max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            allow_pixels_up_to(limit)  # (ours decides; Pillow's then refuses twice ours)
            image = Image.open(io.BytesIO(data))
            if image.format in RUN_BY_ANOTHER_PROGRAM:
                raise ImageDecodeError(RUN_BY_ANOTHER_PROGRAM[image.format])
            width, height = image.size
            if width * height > limit:
                raise ImageDecodeError(
                    f"image too large: {width}x{height} is over the {limit / 1e6:.0f} MP limit "
                    "(DEFECTS_MAX_MEGAPIXELS)",
                    refused_over=limit,
                )
            several = several_frames_reason(image)
            if several is not None:
                raise ImageDecodeError(several)
            image.load()  # a truncated file fails here
            image = _upright(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses far larger images at open, before our own limit is checked; its
        # message names its own limit, not ours, so only the image's size is taken from it.
        size = re.search(r"Image size \((\d+) pixels\)", str(exc))
        found = f"{int(size.group(1)) / 1e6:.0f} MP is " if size else ""
        raise ImageDecodeError(
            f"image too large: {found}over the {limit / 1e6:.0f} MP limit (DEFECTS_MAX_MEGAPIXELS)",
            refused_over=limit,
        ) from exc
    except UnidentifiedImageError as exc:
        if data.count(data[:1]) == len(data):
            # A capture buffer written out unfilled (all zeros, say): the camera's fault, as an
            # empty file is, and recorded every time as one (the same bytes every time). Looked
            # at only here, off the path of the files that decode.
            raise ImageDecodeError(empty_capture_error(len(data), data[0])) from exc
        raise ImageDecodeError("not an image file (unknown or unsupported format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc
    mode = image.mode
    if mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        pixels = _to_uint8(np.asarray(image))
    elif mode in {"L", "RGB"}:
        pixels = np.asarray(image)
    else:  # RGBA, LA, P, CMYK, YCbCr, 1...
        pixels = np.asarray(image.convert("RGB"))
    channels_ok = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    if not channels_ok or pixels.size == 0:
        raise ImageDecodeError(f"unsupported image layout {pixels.shape} (mode {mode})")
    return DecodedImage(np.ascontiguousarray(pixels))


# A frame whose pixels all lie within this many gray levels of each other shows nothing.
BLANK_LEVELS = 2
BLANK_ERROR = "blank image"  # how a blank frame's error begins, which the history counts by
EMPTY_ERROR = "empty file"  # an empty file's error, which the Live page counts by


def empty_capture_error(size: int, fill: int) -> str:
    """The error of a file of `size` bytes, every one `fill`: a capture buffer written out
    unfilled, loose or in a zip (`inspection.batch`)."""
    return f"{EMPTY_ERROR}: {size} bytes, every one 0x{fill:02x} (the camera wrote no image)"


def is_blank_frame(error: str | None) -> bool:
    """Whether a part's error says it was a blank frame (`blank_frame_reason`)."""
    return (error or "").startswith(BLANK_ERROR)


# Where a refusal for size records the pixel limit it was refused at: a key of its record's
# operating point, beside the thresholds (`ImageDecodeError.refused_over`).
REFUSED_OVER_KEY = "refused_over_pixels"
# How refusals recorded before the key named their limit, in words that no longer change.
_TOO_LARGE_BEFORE = re.compile(r"image too large: .*over the (\d+) MP limit")


def refused_at_another_limit(point: object, error: str | None) -> bool:
    """Whether a part's record refuses it for its size at another limit than the one in force:
    raised as the refusal says (DEFECTS_MAX_MEGAPIXELS), the same file was still refused, its
    stored refusal taken for the verdict, naming the limit it no longer is. Read from the limit
    its operating point records, not from the message's words; a refusal recorded before it
    did, by the words it was recorded in."""
    if error is None:
        return False
    refused_over = point.get(REFUSED_OVER_KEY) if isinstance(point, dict) else None
    if refused_over is None:
        found = _TOO_LARGE_BEFORE.match(error)
        refused_over = int(found.group(1)) * 1_000_000 if found is not None else None
    return refused_over is not None and refused_over != max_pixels()


def is_repeated_fault(error: str | None) -> bool:
    """Whether a part's error is a camera fault recorded every time it comes, as a blank frame
    or an empty file (a capture that wrote nothing): the same bytes at every part, so skipped
    as inspected already, it showed once and then nowhere while the camera stayed dead."""
    return is_blank_frame(error) or (error or "").startswith(EMPTY_ERROR)


def blank_frame_reason(image: DecodedImage) -> str | None:
    """Why a frame cannot be judged, if it is blank: a lens cap, dead lighting or a camera
    sending a fill colour gives an image with no defect in it, which would pass as a good part
    (an escape). Sensor noise alone spans more levels than this in any real exposure."""
    source = image.source
    step = max(1, max(image.height, image.width) // 256)

    def channel_ranges(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Each channel on its own: a flat colour (a camera's fill, blue say) spans all 255
        # levels across its channels yet shows nothing, as a flat gray does.
        flat = pixels.reshape(-1, 1 if pixels.ndim == 2 else pixels.shape[2])
        return flat.min(axis=0).astype(int), flat.max(axis=0).astype(int)

    lows, highs = channel_ranges(source[::step, ::step])
    if (highs - lows).max() > BLANK_LEVELS:
        return None  # the common case, decided on a sample
    lows, highs = channel_ranges(source)
    if (highs - lows).max() > BLANK_LEVELS:
        return None
    if len(set(lows)) == 1 and len(set(highs)) == 1:  # gray
        low, high = int(lows[0]), int(highs[0])
        level = f"gray level {low}" if low == high else f"gray levels {low} to {high}"
    else:
        low_colour, high_colour = tuple(map(int, lows)), tuple(map(int, highs))
        level = (
            f"the colour {low_colour}"
            if low_colour == high_colour
            else f"colours {low_colour} to {high_colour}"
        )
    return f"{BLANK_ERROR} (every pixel at {level}): check the camera and its lighting"


@dataclass(frozen=True)
class Letterboxed:
    # 3 x S x S uint8: a quarter of the bytes of the float input, so batches stack and travel
    # to an accelerator four times cheaper; `to_model_input` scales them where they are used.
    pixels: np.ndarray
    original_shape: tuple[int, int]  # (height, width)

    @property
    def tensor(self) -> np.ndarray:
        """3 x S x S float32 in [0, 1], what the network takes."""
        return to_model_input(self.pixels)


def to_model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (any shape) to float32 in [0, 1]; float input is taken as already scaled."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return pixels.astype(np.float32, copy=False)


def letterbox(image: DecodedImage, size: int) -> Letterboxed:
    """Resize keeping the aspect ratio and pad to size x size, centred, as ultralytics does."""
    height, width = image.height, image.width
    scale = min(size / height, size / width)
    # (At least one pixel: a line-scan strip 20000 x 20 rounded its height to 0, and the resize
    # failed and stopped the batch.)
    new_w, new_h = max(round(width * scale), 1), max(round(height * scale), 1)
    resized = image.source
    if (new_w, new_h) != (width, height):
        resized = cv2.resize(image.source, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # Written straight into the channels-first canvas: no full-size transposed copy.
    canvas = np.full((3, size, size), LETTERBOX_FILL, dtype=np.uint8)
    top = round((size - new_h) / 2 - 0.1)
    left = round((size - new_w) / 2 - 0.1)
    channels_first = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    canvas[:, top : top + new_h, left : left + new_w] = channels_first
    return Letterboxed(canvas, (height, width))


@dataclass(frozen=True)
class Tiled:
    """A part larger than a tile: the decoded image and its grid, each tile letterboxed only as
    the engine forms its batches. All letterboxed here, a large frame cut into tiles smaller
    than the model's input would grow many times over, and cross from a decoding process
    whole; so no more than the image itself is held or sent."""

    image: DecodedImage
    grid: tuple[tuple[int, int, int, int], ...]  # (x0, y0, x1, y1) of each tile, `tile_grid`'s

    @property
    def original_shape(self) -> tuple[int, int]:
        return (self.image.height, self.image.width)

    def letterboxed_tile(self, index: int, size: int) -> Letterboxed:
        """Tile `index` as the network takes it, its `original_shape` the tile's own."""
        x0, y0, x1, y1 = self.grid[index]
        return letterbox(DecodedImage(self.image.source[y0:y1, x0:x1]), size)


def store_image(
    images_dir: Path, content_hash: str, name: str, data: bytes, sync_folder: bool = True
) -> Path:
    """Write the bytes once under images/<h[:2]>/<hash><suffix>; atomic, so a crash leaves no half file.

    The bytes reach the disk before the file takes its name, and its folder's entry before this
    returns, so that a verdict committed after it never names an empty or missing file after a
    power cut. Without `sync_folder`, the caller syncs the folders (`sync_store_folders`) once
    for many files, before it commits any of them.

    A file kept already is touched instead: a part judged again is about to get a verdict that
    a prune running now cannot see yet, and the prune keeps a file touched that recently. One of
    another size (left empty by a power cut before images were synced) is written again."""
    suffix = Path(name.split(":")[-1]).suffix.lower()[:8] or ".bin"
    target = images_dir / content_hash[:2] / f"{content_hash}{suffix}"
    try:
        os.utime(target)
        kept = target.stat().st_size == len(data)
    except FileNotFoundError:
        kept = False
    except OSError:  # (another user's file on a shared store: there, left as it is)
        kept = True
    if not kept:
        # A name of its own: two stations sharing the store (or two threads of one batch)
        # may write the same part at once, and one's rename took the other's file away.
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_synced(partial, data)
            partial.replace(target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise store_error(images_dir, exc) from exc
    if sync_folder:  # (a kept file's too: its name may be another station's, not synced yet)
        sync_store_folders(images_dir, [target])
    return target


def store_error(images_dir: Path, exc: OSError) -> StorageError:
    """The store's failure in one line: a full disk says to free space; a disk failing its
    writes or syncs (EIO) to look at the disk, and a store this user cannot write (EACCES) to
    make it writable, where freeing space (or the disk) would not help (`write_fix`)."""
    return StorageError(
        f"cannot keep the parts' images in the image store {images_dir}: "
        f"{exc.strerror or exc}; {write_fix(exc)} (or set DEFECTS_DATA_DIR)"
    )


# What a failed write's errno says to do: one table for every message that names a remedy.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, None)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


# What a read-only file system (EROFS) needs: no change of permissions makes it writable.
_READ_ONLY_FIX = "the file system is mounted read-only: remount it read-write"


def write_fix(exc: OSError) -> str:
    """What to do about a folder that could not be written, to go before "and run ... again":
    free space only where the disk is full; a folder not writable (EACCES, EROFS) or a disk
    failing its writes (EIO) was told to free space too, which would not help either. A
    read-only file system (EROFS) is no user's permission to change: it was told to make the
    folder writable for this user, which no chmod does; it is remounted, or another used."""
    if exc.errno in _NO_SPACE:
        return "free space there"
    if exc.errno == errno.EROFS:
        return f"{_READ_ONLY_FIX} or use another place"
    if exc.errno in _NOT_WRITABLE:
        return "make it writable for this user"
    return "check its disk"


def failed_write(exc: BaseException, folder: Path) -> bool:
    """Whether `exc` is a write under `folder` that `write_fix` has a remedy for: a full disk,
    a folder not writable, a disk failing its writes (EIO). A training or an export said only
    a full disk in one line; the others ended in the system's bare "[Errno 5] Input/output
    error". An error naming a file elsewhere (a dataset's image read) is not this folder's."""
    if not isinstance(exc, OSError) or exc.errno not in (*_NO_SPACE, errno.EIO, *_NOT_WRITABLE):
        return False
    return exc.errno is not None and (
        not exc.filename
        or Path(os.fsdecode(exc.filename)).absolute().is_relative_to(folder.absolute())
    )


def write_advice(exc: OSError) -> str:
    """`write_fix`'s remedy ending in ", or ", for a message that goes on to name another way
    out (another place to write, a folder to make writable): a full disk, a disk failing its
    writes (EIO) or a read-only file system (EROFS), which was given nothing, and the message
    went on to "make ... writable", which no permission change does (a caller's "make it
    writable" is left out there: `read_only_mount`); nothing for a permission refused, which
    that way out answers."""
    if exc.errno == errno.EROFS:
        return f"{_READ_ONLY_FIX}, or "
    if exc.errno not in (*_NO_SPACE, errno.EIO) or exc.errno is None:
        return ""
    return f"{write_fix(exc)}, or "


def read_only_mount(exc: OSError) -> bool:
    """Whether `exc` is a write refused by a file system mounted read-only (EROFS), where
    "make it writable" is no remedy."""
    return exc.errno == errno.EROFS


def sync_file(path: Path) -> None:
    """The file's bytes to disk (a descriptor read-only serves: fsync flushes the file)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _write_synced(path: Path, data: bytes) -> None:
    """A new file of `data`, its bytes on disk when this returns: written and synced through
    one descriptor (the file was opened a second time only to be synced, an open, a lookup of
    its name and a close more for each stored image)."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # (as `open(..., "wb")`)
    try:
        unwritten = memoryview(data)
        while unwritten:  # (a write may take fewer bytes than given: a large file, a signal)
            unwritten = unwritten[os.write(handle, unwritten) :]
        os.fsync(handle)
    finally:
        os.close(handle)


def sync_folder(folder: Path) -> None:
    """The folder's entries (a name just given, or taken away) to disk."""
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def replace_synced(partial: Path, target: Path, *folders: Path) -> None:
    """`partial`, written whole, renamed to `target` so that a power cut leaves the old file
    or the new one under that name, never an empty one: its bytes reach the disk before it
    takes the name, and the name before this returns. `folders`, deepest first: the folders
    above made for it, whose own entries are synced after (a new version's folder)."""
    sync_file(partial)
    partial.replace(target)
    for folder in (target.parent, *folders):
        sync_folder(folder)


def sync_store_folders(images_dir: Path, stored: Iterable[Path]) -> None:
    """The names of the files just stored to disk, once for them all: their folders' entries,
    then the store's own and its parent's (where a first file made its folder, or the store).
    A power cut before this could lose a stored file's name, and the file with it. Deepest
    first, so that a folder's entry in its parent is synced after the folder's own."""
    folders = {path.parent for path in stored}
    if not folders:
        return
    folders |= {images_dir, images_dir.parent}
    try:
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            sync_folder(folder)
    except OSError as exc:
        raise store_error(images_dir, exc) from exc


def located_image(stored_path: str, images_dir: Path | None = None) -> Path:
    """A part's stored image on this machine: the path it was recorded at, else the same file
    of this machine's image store. The store names each file by its content, so a file of that
    name there holds the part's bytes; a data folder moved to another disk, or a store that
    stations sharing one database mount at their own paths, is then still found. Where neither
    is there, the recorded path, so that a message names where the image was expected."""
    recorded = Path(stored_path)
    if not stored_path or recorded.is_file():
        return recorded
    here = same_place_under(stored_path, images_dir or get_settings().images_dir, depth=2)
    return here if here.is_file() else recorded


@dataclass(frozen=True)
class StoreRequest:
    """Where a part's bytes are kept: the content-addressed image store, file name for the suffix."""

    images_dir: Path
    content_hash: str
    name: str


# (letterboxed or tiled, None, pixels kept for a classifier, stored file, None), or
# (None, reason, None, stored file, the pixel limit an image too large was refused at)
Prepared = tuple[
    Letterboxed | Tiled | None, str | None, DecodedImage | None, Path | None, int | None
]


# A file that is not an image is kept in the store with its error up to this size; beyond it
# only its error is: a zip of 200 MB blobs filled the store with 1.6 GB of bytes no one looks
# at, and a full store stops the run. (The file itself stays where it came from.) A file of one
# byte over and over (an unfilled capture buffer) is none either: a 600 KB zip of three 200 MB
# such entries, each byte its own, put 600 MB in the store. So is every other file refused
# (an image too large, of several frames, blank): an error is never reviewed, so no page, review,
# backtest or export reads its stored bytes, and one judged again (at a raised pixel limit) is
# read from its source; a 250 MB header claiming a 10000 MP image was kept whole, each copy.
KEEP_NON_IMAGE_BYTES = 16 * 1024 * 1024
NOT_AN_IMAGE = (
    "not an image file",
    "corrupt or truncated image",
    "cannot read the image",
    EMPTY_ERROR,
)


def prepare_parts(
    datas: list[bytes],
    size: int,
    keep_pixels: bool,
    stores: list[StoreRequest] | None = None,
    tile: TileSpec | None = None,
) -> list[Prepared]:
    """Decode, letterbox and store (when asked) a chunk of parts; with `tile`, a part larger
    than a tile is handed back `Tiled`, cut by `tile_grid`.

    Module level and without the model, so that worker processes can run it; storing
    here spreads the image store's system calls over the workers that already hold the bytes.
    A refused file (undecodable, too large, blank) is stored all the same, kept with its
    error, up to KEEP_NON_IMAGE_BYTES. Each stored file's bytes are synced, its folder not: the
    caller syncs the folders of a batch's files at once (`sync_store_folders`)."""
    prepared: list[Prepared] = []
    for i, data in enumerate(datas):
        boxed: Letterboxed | Tiled | None = None
        decoded, error, refused_over = None, None, None
        try:
            decoded = decode_image(data)
            error = blank_frame_reason(decoded)  # a blank frame: neither passed nor failed
            if error is None and needs_tiling(decoded.width, decoded.height, tile):
                assert tile is not None
                boxed = Tiled(decoded, tuple(tile_grid(decoded.width, decoded.height, tile)))
            elif error is None:
                boxed = letterbox(decoded, size)
        except ImageDecodeError as exc:
            error, refused_over = str(exc), exc.refused_over
        except Exception as exc:  # noqa: BLE001 - one file's surprise is that file's error
            # Whatever an image library raises on one odd file is recorded against that file;
            # it stopped the whole batch, and every rerun, on it.
            logger.exception("preparing an image failed")
            error = f"cannot read the image: {type(exc).__name__}: {exc}"
        stored = None
        if stores is not None:
            if error and len(data) > KEEP_NON_IMAGE_BYTES:
                what = (
                    "is not an image" if error.startswith(NOT_AN_IMAGE) else "could not be judged"
                )
                error += f" (not kept: {len(data) / 1e6:.0f} MB that {what})"
            else:
                request = stores[i]
                stored = store_image(
                    request.images_dir, request.content_hash, request.name, data, False
                )
        if error is not None:
            prepared.append((None, error, None, stored, refused_over))
        else:
            prepared.append((boxed, None, decoded if keep_pixels else None, stored, None))
    return prepared

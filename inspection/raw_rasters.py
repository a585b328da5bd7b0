"""The size an uncompressed raster file's header explains, read from its first bytes alone.

A camera's raw frame (BMP, uncompressed TIFF, binary PGM/PPM) of a flat scene, a blank frame
say, packs in a zip as far as a zip bomb does. Its header gives width, height and bytes per
pixel, so whether its size is an image's can be told before it is unpacked
(`inspection.batch`): a bomb's zeros are more than any header it carries explains.
"""

from __future__ import annotations

import re
import struct

# How many of an entry's first bytes are read for its header: a BMP's two headers, a binary
# PGM/PPM's, and the tags a TIFF's writer puts right after its own (Pillow's, a camera SDK's).
RAW_HEADER_READ_BYTES = 512
# What a raw file may hold beyond its rows of pixels: its headers, a palette, TIFF tags, an
# ICC profile. Past the ratio's floor (4 MB) this is under 2% more than the pixels.
RAW_HEADER_ALLOWANCE = 64 * 1024

# BMP compressions that store pixels as they are: BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS.
_BMP_UNCOMPRESSED = {0, 3, 6}
_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_BITS, _TIFF_COMPRESSION = 256, 257, 258, 259
_TIFF_SAMPLES, _TIFF_PLANAR = 277, 284
_TIFF_READ = {_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_BITS, _TIFF_COMPRESSION, _TIFF_SAMPLES, _TIFF_PLANAR}
# (A PNM header: magic, then width, height and (but for P4) maxval, each after whitespace
# and any comment lines, then one whitespace byte before the pixels.)
_PNM_FIELD = rb"(?:\s|#[^\n]*\n)+(\d+)"
_PNM_HEADER = re.compile(rb"P([456])" + _PNM_FIELD + _PNM_FIELD + rb"(?:" + _PNM_FIELD + rb")?\s")


def explained_size(head: bytes) -> int | None:
    """The most bytes a file of these first bytes holds where it is the uncompressed image its
    header says (rows with their padding, and RAW_HEADER_ALLOWANCE), or None where they are no
    uncompressed BMP, TIFF or binary PGM/PPM header (a compressed one, text, anything else)."""
    try:
        if head[:2] == b"BM":
            pixels = _bmp_pixel_bytes(head)
        elif head[:4] in (b"II*\x00", b"MM\x00*"):
            pixels = _tiff_pixel_bytes(head)
        else:
            pixels = _pnm_pixel_bytes(head)
    except struct.error:  # (a header cut short by the entry's own end)
        return None
    if pixels is None or pixels <= 0:
        return None
    return pixels + RAW_HEADER_ALLOWANCE


def header_lies_further(head: bytes, size: int) -> bool:
    """Whether these first bytes are a TIFF's whose tags (its first IFD) lie past them, inside
    a file of `size` bytes: libtiff (OpenCV's writer among its users) writes them after the
    pixels, so that only the whole file tells the size they explain."""
    if head[:4] not in (b"II*\x00", b"MM\x00*") or len(head) < 8:
        return False
    (ifd,) = struct.unpack_from("<I" if head[:2] == b"II" else ">I", head, 4)
    return len(head) <= ifd < size


def _bmp_pixel_bytes(head: bytes) -> int | None:
    (header_size,) = struct.unpack_from("<I", head, 14)
    if header_size == 12:  # BITMAPCOREHEADER (OS/2): no compression field
        width, height, _planes, bits = struct.unpack_from("<HHHH", head, 18)
        compression = 0
    elif header_size >= 40:
        width, height, _planes, bits, compression = struct.unpack_from("<iiHHI", head, 18)
    else:
        return None
    if compression not in _BMP_UNCOMPRESSED or bits not in (1, 4, 8, 16, 24, 32):
        return None
    row = (width * bits + 31) // 32 * 4  # rows padded to 4 bytes
    return row * abs(height) if width > 0 else None  # (a top-down BMP's height is negative)


def _tiff_pixel_bytes(head: bytes) -> int | None:
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", head, 4)
    (count,) = struct.unpack_from(order + "H", head, ifd)
    tags: dict[int, list[int]] = {}
    for at in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, values = struct.unpack_from(order + "HHI", head, at)
        if tag not in _TIFF_READ or kind not in (3, 4) or not 0 < values <= 16:  # (SHORT, LONG)
            continue
        size = 2 if kind == 3 else 4
        where = at + 8 if values * size <= 4 else struct.unpack_from(order + "I", head, at + 8)[0]
        tags[tag] = list(
            struct.unpack_from(f"{order}{values}{'H' if kind == 3 else 'I'}", head, where)
        )
    if (
        tags.get(_TIFF_COMPRESSION, [1]) != [1]
        or _TIFF_WIDTH not in tags
        or _TIFF_HEIGHT not in tags
    ):
        return None
    width, height = tags[_TIFF_WIDTH][0], tags[_TIFF_HEIGHT][0]
    samples = tags.get(_TIFF_SAMPLES, [1])[0]
    bits = tags.get(_TIFF_BITS, [1] * samples)
    if len(bits) == 1:
        bits = bits * samples
    if tags.get(_TIFF_PLANAR, [1]) == [2]:  # each sample a plane of its own, its rows padded
        return sum(height * ((width * sample_bits + 7) // 8) for sample_bits in bits)
    return height * ((width * sum(bits) + 7) // 8)  # rows padded to a byte


def _pnm_pixel_bytes(head: bytes) -> int | None:
    found = _PNM_HEADER.match(head)
    if found is None:
        return None
    kind, width, height = found.group(1), int(found.group(2)), int(found.group(3))
    if kind == b"4":  # PBM: a bit a pixel, rows padded to a byte
        return height * ((width + 7) // 8)
    if found.group(4) is None:
        return None
    sample_bytes = 1 if int(found.group(4)) < 256 else 2
    return width * height * (3 if kind == b"6" else 1) * sample_bytes

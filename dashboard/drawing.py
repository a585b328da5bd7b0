"""Parts with their defects drawn: boxes, class and confidence."""

from __future__ import annotations

import colorsys
import zlib
from bisect import insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dashboard.text import plain
from db.models import Prediction

Colour = tuple[int, int, int]
# Each defect class in a colour of its own, from Okabe and Ito's palette, told apart with any
# colour vision (every box was red, whatever its class). Black is left out: unseen on dark
# parts. A box below its class threshold is dashed, in its class's colour.
CLASS_COLOURS: tuple[Colour, ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
)
# A detector's 8th class and beyond: these, then colours of their own (`_spread_colour`). All
# seven above again (by index modulo seven), the 8th class was drawn as the 1st. Chosen from
# Paul Tol's colour-blind-aware palettes, those furthest (CIELAB) from the ones above and from
# each other; greys left out, unseen on grey steel.
MORE_CLASS_COLOURS: tuple[Colour, ...] = (
    (51, 34, 136),  # indigo
    (136, 85, 34),  # brown
    (153, 153, 51),  # olive
    (136, 34, 85),  # wine
    (170, 221, 102),  # lime
    (170, 68, 153),  # purple
    (187, 204, 238),  # pale blue
)
_GOLDEN_RATIO = (5**0.5 - 1) / 2
DASH_PX = 6  # a dashed outline's dash (and gap) on a drawing LABELLED_SIDE across
SHOWN_LONGEST = 2048  # the longest side a part is drawn at: larger ones are shrunk to it
GROWN_SIDE = 1024  # the longest side an image is grown to, so that thin defects stay visible
LABELLED_SIDE = 900  # about the width a page shows a drawing at (1400 px screen): labels fit it
LABEL_PX = 12  # a label's font size on a drawing LABELLED_SIDE across


def class_colour(class_name: str, classes: Sequence[str] = ()) -> Colour:
    """A class's colour: by its place in the detector's classes (`classes`), which retraining
    keeps (new classes come after), so that a class is drawn alike on every part and page; a
    class not among them (a reviewer's new one) by its name alone."""
    if class_name not in classes:
        return CLASS_COLOURS[zlib.crc32(class_name.encode("utf-8")) % len(CLASS_COLOURS)]
    index = list(classes).index(class_name)
    palette = CLASS_COLOURS + MORE_CLASS_COLOURS
    return palette[index] if index < len(palette) else _spread_colour(index - len(palette))


def _spread_colour(n: int) -> Colour:
    """The `n`th colour past the palettes: hues a golden ratio of the circle apart (none the
    same as another's), at three lightnesses in turn, for detectors of many classes."""
    red, green, blue = colorsys.hls_to_rgb((n * _GOLDEN_RATIO) % 1.0, (0.4, 0.6, 0.75)[n % 3], 0.8)
    return round(red * 255), round(green * 255), round(blue * 255)


def _luminance(colour: Colour) -> float:
    """WCAG's relative luminance of an sRGB colour."""
    srgb = [c / 255 for c in colour]
    linear = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in srgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_colour(background: Colour) -> Colour:
    """Black or white, whichever contrasts more with a label's `background` (white on the
    palette's yellow or sky blue could not be read)."""
    light = _luminance(background)
    return (0, 0, 0) if (light + 0.05) / 0.05 >= 1.05 / (light + 0.05) else (255, 255, 255)


def hex_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def label_markdown(text: str, colour: Colour) -> str:
    """`text` as Markdown on `colour`, as a box's label is drawn (`draw_boxes`), for a page's
    list of the boxes: each line matched to its box by its colour, not its number alone.
    Shown with HTML allowed, for the span alone: `text` is `plain`, so a name holding HTML
    reads as typed."""
    return (
        f'<span style="background-color: {hex_colour(colour)}; '
        f'color: {hex_colour(text_colour(colour))}; padding: 0 0.25em">{plain(text)}</span>'
    )


@dataclass(frozen=True)
class DrawnBox:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    colour: Colour = CLASS_COLOURS[0]
    counted: bool = True  # (False: below its class threshold, drawn dashed)
    confidence: float | None = None  # (a prediction's; None for a box a reviewer drew)


def prediction_boxes(
    predictions: Iterable[Prediction], classes: Sequence[str] = ()
) -> list[DrawnBox]:
    """A verdict's boxes as drawn, each in its class's colour (`class_colour`), those below
    their class threshold dashed."""
    return [
        DrawnBox(
            f"{p.class_name} {p.confidence:.2f}",
            p.x1,
            p.y1,
            p.x2,
            p.y2,
            class_colour(p.class_name, classes),
            p.counted,
            p.confidence,
        )
        for p in predictions
        if p.x1 is not None and p.y1 is not None and p.x2 is not None and p.y2 is not None
    ]


def draw_boxes(pixels: np.ndarray, boxes: Iterable[DrawnBox], min_side: int = 320) -> Image.Image:
    """The image (scaled up when small, so thin defects stay visible) with labelled boxes."""
    image = Image.fromarray(pixels)
    # Grown no longer than GROWN_SIDE on its long side: a thin strip (a line-scan frame a few
    # pixels high, a close-up of a box on it) grown to min_side on its short side was
    # hundreds of thousands of pixels long, gigabytes to draw and send.
    longest = max(max(image.size), 1)
    if longest > SHOWN_LONGEST:
        # Shrunk, as the page shows it anyway: a 64 MP part was drawn and sent whole, tens of
        # megabytes a rerun (its boxes are also shown close up, at its own resolution).
        scale = SHOWN_LONGEST / longest
    else:
        scale = max(1.0, min(min_side / max(min(image.size), 1), GROWN_SIDE / longest))
    if scale != 1:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BOX,
        )
    draw = ImageDraw.Draw(image)
    # Labels and lines sized for the page, which shows a drawing about LABELLED_SIDE px
    # across: a 4000 px part drawn at 2048 px with Pillow's 10 px font and 2 px lines was
    # shown at half that, its label a red tab of 5 px no one could read.
    shown_scale = max(1.0, max(image.size) / LABELLED_SIDE)
    font = ImageFont.load_default(size=round(LABEL_PX * shown_scale))  # bundled with Pillow
    width = max(2, round(scale), round(2 * shown_scale))
    boxes = list(boxes)
    corners = [[b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale] for b in boxes]
    dash = max(2, round(DASH_PX * shown_scale))
    for box, corner in zip(boxes, corners, strict=True):
        if box.counted:
            draw.rectangle(corner, outline=box.colour, width=width)
        else:
            _dashed_rectangle(draw, corner, box.colour, width, dash)
    # Labels after every box (a later box's line crossed an earlier label) and each clear of
    # those placed before: two boxes starting near the same corner had one label over the
    # other, "crazing 0.18" hidden under "crazing 0.12".
    placed: list[tuple[float, float, float, float]] = []  # (top first: kept in its order)
    for box, corner in zip(boxes, corners, strict=True):
        text_box = draw.textbbox((0, 0), box.label, font=font)
        label_width = text_box[2] - text_box[0] + 4
        label_height = text_box[3] - text_box[1] + 4
        # (Within the image: a box at its right edge had its label cut off there,
        # "rolled-in_sc".)
        left = max(0.0, min(corner[0], image.width - 1 - label_width))  # (edges inclusive)
        top = max(0.0, corner[1] - label_height)
        # (One pass down the labels placed, top first: a part has up to 1300 boxes.)
        for other_top, other_left, other_right, other_bottom in placed:
            beside = left < other_right and other_left < left + label_width
            if beside and top < other_bottom and other_top < top + label_height:
                top = other_bottom
        insort(placed, (top, left, left + label_width, top + label_height))
        draw.rectangle([left, top, left + label_width, top + label_height], fill=box.colour)
        draw.text(
            (left + 2 - text_box[0], top + 2 - text_box[1]),
            box.label,
            fill=text_colour(box.colour),
            font=font,
        )
    return image


def _dashed_rectangle(
    draw: ImageDraw.ImageDraw, corner: list[float], colour: Colour, width: int, dash: int
) -> None:
    """A box's outline in dashes of `dash` pixels (Pillow draws no dashed lines)."""
    x1, y1, x2, y2 = corner
    inset = (width - 1) / 2  # (inside the box, as Pillow's rectangle draws its outline)
    for start, end in (
        ((x1, y1 + inset), (x2, y1 + inset)),
        ((x1, y2 - inset), (x2, y2 - inset)),
        ((x1 + inset, y1), (x1 + inset, y2)),
        ((x2 - inset, y1), (x2 - inset, y2)),
    ):
        length = max(abs(end[0] - start[0]), abs(end[1] - start[1]))
        steps = max(1, int(length // (2 * dash)) + 1)
        for step in range(steps):
            a = min(step * 2 * dash, length) / max(length, 1e-9)
            b = min(step * 2 * dash + dash, length) / max(length, 1e-9)
            draw.line(
                [
                    (start[0] + (end[0] - start[0]) * a, start[1] + (end[1] - start[1]) * a),
                    (start[0] + (end[0] - start[0]) * b, start[1] + (end[1] - start[1]) * b),
                ],
                fill=colour,
                width=width,
            )


CLOSE_UP_CONTEXT = 64  # pixels of the part shown around a box in its close-up, at least
CLOSE_UP_MAX_CONTEXT = 256  # ... and at most
CLOSE_UP_MAX_SIDE = 1024  # a close-up larger than this is shrunk to it: it is shown small


def close_up_choice(boxes: list[DrawnBox], count: int) -> list[DrawnBox]:
    """The boxes a page shows close up when it cannot show them all: those that fail the part
    first, each kind most confident first (six less confident boxes below their thresholds,
    shown in stored order, pushed out the one that failed the part)."""
    return sorted(boxes, key=lambda b: (not b.counted, -(b.confidence or 0.0)))[:count]


def close_up(pixels: np.ndarray, box: DrawnBox) -> Image.Image:
    """A box and the part around it at the part's own resolution (grown, when small, as
    `draw_boxes` grows an image): the whole of a large part is shown shrunk (a 20 MP frame to
    about a twentieth of its side), where a defect of a few pixels is not there to judge."""
    height, width = pixels.shape[:2]
    # Context as large as the box, within limits: a box thousands of pixels across made a
    # "close-up" of nearly the whole frame, drawn full size for each box.
    margin_x = min(max(CLOSE_UP_CONTEXT, round(box.x2 - box.x1)), CLOSE_UP_MAX_CONTEXT)
    margin_y = min(max(CLOSE_UP_CONTEXT, round(box.y2 - box.y1)), CLOSE_UP_MAX_CONTEXT)
    # Never an empty crop, even for a box off the image (drawn on another size of it).
    left = min(max(0, int(box.x1) - margin_x), width - 1)
    top = min(max(0, int(box.y1) - margin_y), height - 1)
    right = max(min(width, int(np.ceil(box.x2)) + margin_x), left + 1)
    bottom = max(min(height, int(np.ceil(box.y2)) + margin_y), top + 1)
    moved = DrawnBox(
        box.label,
        box.x1 - left,
        box.y1 - top,
        box.x2 - left,
        box.y2 - top,
        box.colour,
        box.counted,
    )
    crop = np.ascontiguousarray(pixels[top:bottom, left:right])
    shrink = max(crop.shape[:2]) / CLOSE_UP_MAX_SIDE
    if shrink > 1:  # (a box larger than a close-up: seen whole, as it is on the part)
        crop = np.asarray(
            Image.fromarray(crop).resize(
                # (At least a pixel: a strip a few pixels high shrank to none, an error.)
                (max(1, round(crop.shape[1] / shrink)), max(1, round(crop.shape[0] / shrink))),
                Image.Resampling.BOX,
            )
        )
        moved = DrawnBox(
            moved.label,
            moved.x1 / shrink,
            moved.y1 / shrink,
            moved.x2 / shrink,
            moved.y2 / shrink,
            moved.colour,
            moved.counted,
        )
    return draw_boxes(crop, [moved])


def unshown_image(path: str, exc: Exception) -> str:
    """Why a part's stored image cannot be shown, in plain words (the OS error's "[Errno 2]"
    told a reviewer nothing): a missing file was pruned, or is on another station's disk."""
    if isinstance(exc, FileNotFoundError) or not path:
        where = f" (expected at {path})" if path else ""
        return (
            f"The image is not on this machine{where}: it was deleted since, or is kept on "
            "another station's disk."
        )
    if isinstance(exc, OSError):
        return f"The image at {path} cannot be read: {exc.strerror or exc}."
    return f"The image at {path} is not one that can be shown: {exc}."

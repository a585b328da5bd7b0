"""Plotly figures for the history page: plain functions, data in, figure out (tested without
Streamlit)."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.drawing import CLASS_COLOURS, Colour, hex_colour, text_colour
from dashboard.text import chart
from db.queries import (
    LatencyHistogram,
    LatencySummary,
    MinuteVolume,
    ModelUsage,
    ParetoRow,
    RateRow,
    VolumeRow,
)
from inspection.tiling import station_grid
from training.calibrate import upper_bound


@dataclass(frozen=True)
class PChart:
    center: float
    upper: list[float | None]  # None on a day with no part to count: no limit, a gap
    lower: list[float | None]
    out_of_control: list[bool]


def p_chart(failures: list[int], totals: list[int], sigmas: float = 3.0) -> PChart:
    """SPC p-chart: centre line p-bar (all failures over all parts) and per-sample limits
    p-bar +/- 3 sqrt(p-bar (1 - p-bar) / n), clipped to [0, 1]. A sample of no parts has no
    limits: drawn on p-bar, they read as a limit of zero width that the day sat on."""
    grand_total = sum(totals)
    center = sum(failures) / grand_total if grand_total else 0.0
    upper: list[float | None] = []
    lower: list[float | None] = []
    flags: list[bool] = []
    for failed, n in zip(failures, totals, strict=True):
        if not n:
            upper.append(None)
            lower.append(None)
            flags.append(False)
            continue
        spread = sigmas * math.sqrt(center * (1 - center) / n)
        high, low = min(1.0, center + spread), max(0.0, center - spread)
        upper.append(high)
        lower.append(low)
        flags.append(failed / n > high or failed / n < low)
    return PChart(center, upper, lower, flags)


_RATE_COLOURS = ("#1f77b4", "#ff7f0e")  # the miss rate's, the false-call rate's


def _rate_panel(
    figure: go.Figure,
    row: int,
    days: list[date],
    failures: list[int],
    totals: list[int],
    name: str,
    counted: str,
) -> None:
    rates = [f / n if n else None for f, n in zip(failures, totals, strict=True)]
    colour = _RATE_COLOURS[row - 1]
    if not any(totals):
        # (An empty panel with no word: with a class chosen and no reviewed good part, the
        # false-call chart was blank and read as broken.)
        axis = "" if row == 1 else str(row)
        figure.add_annotation(
            text=f"no reviewed {counted} in this selection: no {name} to show",
            xref=f"x{axis} domain",
            yref=f"y{axis} domain",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    chart = p_chart(failures, totals)
    figure.add_trace(
        go.Scatter(
            x=days,
            y=rates,
            mode="lines+markers",
            name=name,
            # In the panel's own colour, as its line and legend (the false-call rate's points
            # were the miss rate's blue on an orange line); out of control in red.
            line={"color": colour},
            marker={"color": ["#d62728" if o else colour for o in chart.out_of_control]},
            customdata=list(zip(failures, totals, strict=True)),
            hovertemplate="%{x}: %{y:.2%} (%{customdata[0]} of %{customdata[1]})<extra></extra>",
        ),
        row=row,
        col=1,
    )
    # p-bar across the whole axis, each day's limits across its own day: drawn from day to
    # day, a range of one day (or a day between two with no limits) drew none of them, a line
    # of one point, and a step began at each day's point, half a day off the day it was of.
    whole_axis = [_day_edge(min(days), -0.5), _day_edge(max(days), 0.5)] if days else []
    figure.add_trace(
        go.Scatter(
            x=whole_axis,
            y=[chart.center] * len(whole_axis),
            mode="lines",
            name=f"{name} p-bar",
            line={"dash": "dash", "color": "grey"},
            hovertemplate=f"p-bar %{{y:.2%}}<extra>{name}</extra>",
        ),
        row=row,
        col=1,
    )
    # The control limits: drawn alike, the upper in red and the lower in green.
    for label, limit, colour in (("UCL", chart.upper, "#d62728"), ("LCL", chart.lower, "#2ca02c")):
        figure.add_trace(
            go.Scatter(
                x=[edge for day in days for edge in _day_span(day)],
                y=[y for value in limit for y in (value, value, None)],
                mode="lines",
                name=f"{name} {label}",
                line={"dash": "dot", "color": colour},
                hovertemplate=f"{label} %{{y:.2%}}<extra>{name}</extra>",
            ),
            row=row,
            col=1,
        )


_LIMIT_WIDTH = 0.8  # of a day: the span a day's control limit is drawn over, as a volume bar


def _day_edge(day: date, shift_days: float) -> datetime:
    return datetime.combine(day, time()) + timedelta(days=shift_days)


def _day_span(day: date) -> tuple[datetime, datetime, None]:
    """A day's limit from one end of it to the other (None: the break before the next day's)."""
    return _day_edge(day, -_LIMIT_WIDTH / 2), _day_edge(day, _LIMIT_WIDTH / 2), None


_DAY_MS = 86_400_000
_MOST_DAY_TICKS = 10


def _day_axis(figure: go.Figure, days: list[date]) -> None:
    """An x axis of whole days: each tick a date, the range half a day beyond the first and
    last. Left to Plotly, one day's points had ticks a fraction of a millisecond apart
    ("23:59:59.9995") and a few days' bars were labelled with midnight's time."""
    if not days:
        return
    first, last = min(days), max(days)
    step = max(1, math.ceil(((last - first).days + 1) / _MOST_DAY_TICKS))
    figure.update_xaxes(
        type="date",
        range=[
            datetime.combine(first, time()) - timedelta(hours=12),
            datetime.combine(last, time()) + timedelta(hours=12),
        ],
        tick0=first.isoformat(),
        dtick=step * _DAY_MS,
        tickformat="%b %-d, %Y",
    )


DayRange = tuple[date, date]  # the first and last day picked


def _every_day(rows: list[RateRow], picked: DayRange | None = None) -> list[RateRow]:
    """`rows`, one a day, with a row of no parts on each day between them that had none (and
    on each day of the range `picked`): a day with no reviewed part has no row, and the rate's
    line ran straight across it, a rate drawn where none was measured, while a day with
    reviews but none in a panel's count was a gap. Each is a gap now."""
    by_day = {r.key: r for r in rows if isinstance(r.key, date)}
    if len(by_day) != len(rows) or not by_day:
        return rows
    first, last = min(by_day), max(by_day)
    if picked is not None:
        first, last = min(first, picked[0]), max(last, picked[1])
    return [
        by_day.get(day) or RateRow(0, 0, 0, 0, key=day)
        for day in (first + timedelta(days=n) for n in range((last - first).days + 1))
    ]


def rates_figure(
    rows: list[RateRow], zone: str = "UTC", picked: DayRange | None = None
) -> go.Figure:
    """Miss rate and false-call rate per day (of the time `zone` names), each with its p-chart
    control limits, over the days `picked` (or those of `rows`): over the days with reviews
    only, a month with reviews on three days read as three days in a row, the gaps unseen."""
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        subplot_titles=("Miss rate (escapes)", "False-call rate (overkill)"),
    )
    rows = _every_day(rows, picked)
    days = [r.key for r in rows]
    _rate_panel(
        figure,
        1,
        days,  # type: ignore[arg-type]
        [r.n_missed for r in rows],
        [r.n_defective for r in rows],
        "miss rate",
        "defective parts",
    )
    _rate_panel(
        figure,
        2,
        days,
        [r.n_false_calls for r in rows],
        [r.n_good for r in rows],
        "false-call rate",
        "good parts",
    )  # type: ignore[arg-type]
    figure.update_yaxes(tickformat=".1%", rangemode="tozero")
    figure.update_xaxes(title_text=f"day captured ({zone})", row=2, col=1)
    _day_axis(figure, [day for day in days if isinstance(day, date)])
    # The legend above the charts: below them it lay over the axis title.
    figure.update_layout(
        height=600,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "x": 0},
        margin={"t": 90},
    )
    return figure


def _parts(n: int, kind: str) -> str:
    """`kind` part or parts, as `n` wants it ("1 of 1 defective parts" read as a slip)."""
    return f"{kind} part" if n == 1 else f"{kind} parts"


def rates_summary(rows: list[RateRow], reviewed_of_judged: tuple[int, int] | None = None) -> str:
    """The miss and false-call rates over all the days of `rows`, each with its counts and its
    95% upper bound: a month's report quotes the month's rates, which the chart gives day by
    day only (its p-bar, unnumbered), and a rate of few parts says little without its bound.
    With `reviewed_of_judged` (`db.queries.reviewed_of_judged`), how many parts they are of:
    the rates are of reviewed parts only, a few of those judged."""

    def one(name: str, failures: int, total: int, counted: str) -> str:
        bound = upper_bound(failures, total)
        if bound is None:
            return f"{name}: no reviewed {counted} parts"
        return (
            f"{name} {failures / total:.1%} ({failures} of {total} {_parts(total, counted)}; "
            f"95% upper bound {bound:.1%})"
        )

    missed, defective = sum(r.n_missed for r in rows), sum(r.n_defective for r in rows)
    false_calls, good = sum(r.n_false_calls for r in rows), sum(r.n_good for r in rows)
    source = ""
    if reviewed_of_judged is not None:
        reviewed, judged = reviewed_of_judged
        source = f", from {reviewed} {_parts(reviewed, 'reviewed')} of {judged} judged"
    return (
        f"Over these days{source}: {one('miss rate', missed, defective, 'defective')}; "
        f"{one('false-call rate', false_calls, good, 'good')}."
    )


def _verdict_bars(
    x: list[object], rows: list[VolumeRow] | list[MinuteVolume], title: str, height: int
) -> go.Figure:
    """Parts passed, failed and in error, stacked, one bar per day or minute."""
    figure = go.Figure(
        [
            go.Bar(
                x=x,
                y=[r.inspected - r.failed - r.errors for r in rows],
                name="passed",
                marker_color="#2ca02c",
            ),
            go.Bar(x=x, y=[r.failed for r in rows], name="failed", marker_color="#d62728"),
            go.Bar(x=x, y=[r.errors for r in rows], name="errors", marker_color="#7f7f7f"),
        ]
    )
    figure.update_layout(
        barmode="stack", title=title, yaxis_title="parts", height=height, margin={"t": 40}
    )
    return figure


def volume_figure(
    rows: list[VolumeRow], zone: str = "UTC", picked: DayRange | None = None
) -> go.Figure:
    """Parts per day they were captured, a day of the time `zone` names, over the days
    `picked` (or those of `rows`), as the rates above it."""
    figure = _verdict_bars([r.day for r in rows], rows, "Parts inspected per day", 360)
    figure.update_xaxes(title_text=f"day captured ({zone})")
    _day_axis(figure, [r.day for r in rows] + ([*picked] if rows and picked else []))
    figure.update_traces(width=0.8 * _DAY_MS)  # (a lone day's bar was a hairline on a date axis)
    return figure


def minute_volume_figure(rows: list[MinuteVolume]) -> go.Figure:
    """The last hour of a line, minute by minute: what a supervisor glances at."""
    return _verdict_bars([r.minute for r in rows], rows, "Parts per minute (UTC)", 300)


_PLAIN, _HIGHLIGHTED = "#1f77b4", "#d62728"


def pareto_figure(rows: list[ParetoRow], highlight: str | None = None) -> go.Figure:
    """Failed parts per class, most first; the class `highlight` names in red (a Pareto compares
    the classes, so a class chosen is shown among them)."""
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    names = [r.class_name for r in rows]
    colours = [_HIGHLIGHTED if name == highlight else _PLAIN for name in names]
    shown = [chart(name) for name in names]  # (class names are people's: shown as typed)
    figure.add_trace(
        go.Bar(
            x=shown,
            y=[r.failed_parts for r in rows],
            name="failed parts",
            marker_color=colours if highlight is not None else None,
        ),
        secondary_y=False,
    )
    figure.add_trace(
        go.Scatter(
            x=shown, y=[r.cumulative_share for r in rows], name="cumulative", mode="lines+markers"
        ),
        secondary_y=True,
    )
    figure.update_yaxes(title_text="failed parts", secondary_y=False)
    figure.update_yaxes(
        title_text="cumulative share", tickformat=".0%", range=[0, 1.05], secondary_y=True
    )
    # The legend above the bars: at the right, Plotly's default, it lay over the share axis
    # (its 100% read "10").
    figure.update_layout(
        title="Defect Pareto",
        height=360,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    )
    return figure


# The colours of the grids' bars and percentiles, the fastest grid first.
GRID_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def latency_figure(histograms: list[LatencyHistogram]) -> go.Figure:
    """Parts per latency bin, binned in the database (`db.queries.latency_histogram`): a
    histogram binned in the browser is sent every part's value, 9.26 MB of JSON at each render
    of a month of 500000 parts (bench/results/history_page_cpu.json). Given one histogram per
    grid (`db.queries.latency_by_grid`), each grid's bars are stacked in a colour of their own,
    named in the legend with its p50 and p99: a part judged in tiles takes longer than one
    judged whole, and mixed they read as a station grown slower."""
    if len(histograms) > 1:
        return _latency_by_grid_figure(histograms)
    histogram = histograms[0] if histograms else LatencyHistogram([], [], _NO_LATENCY)
    figure = go.Figure()
    if histogram.counts:
        figure.add_trace(_latency_bars(histogram, "parts", ""))
        for q, value, colour in (
            (50, histogram.summary.p50_ms, "#1f77b4"),
            (99, histogram.summary.p99_ms, "#d62728"),
        ):
            figure.add_vline(
                x=value, line_dash="dash", line_color=colour, annotation_text=f"p{q} {value:.0f} ms"
            )
    figure.update_layout(
        title="Latency per part", xaxis_title="ms", yaxis_title="parts", height=360, bargap=0
    )
    return figure


_NO_LATENCY = LatencySummary(0, None, None, None, None, None)


def _latency_bars(histogram: LatencyHistogram, name: str, extra: str, **style: Any) -> go.Bar:
    """A histogram's bars at their own widths (its bins may be uneven), each hovered with
    its range; `extra` is the hover's side label (a grid's name), already made chart-safe."""
    edges = np.asarray(histogram.edges, dtype=float)
    return go.Bar(
        x=((edges[:-1] + edges[1:]) / 2).tolist(),
        y=list(histogram.counts),
        width=np.diff(edges).tolist(),
        customdata=np.column_stack((edges[:-1], edges[1:])).tolist(),
        hovertemplate="%{customdata[0]:.1f} to %{customdata[1]:.1f} ms: %{y} parts"
        f"<extra>{extra}</extra>",
        name=name,
        **style,
    )


def _latency_by_grid_figure(histograms: list[LatencyHistogram]) -> go.Figure:
    """The bars of each grid stacked on the bins they share, its percentiles dashed in its
    colour."""
    figure = go.Figure()
    for n, histogram in enumerate(h for h in histograms if h.counts):
        colour = GRID_COLOURS[n % len(GRID_COLOURS)]
        summary = histogram.summary
        name = (
            f"{station_grid(histogram.grid)}: p50 {summary.p50_ms:.0f} ms, "
            f"p99 {summary.p99_ms:.0f} ms"
        )
        figure.add_trace(
            _latency_bars(
                histogram, chart(name), chart(station_grid(histogram.grid)), marker_color=colour
            )
        )
        for value, dash in ((summary.p50_ms, "dash"), (summary.p99_ms, "dot")):
            figure.add_vline(x=value, line_dash=dash, line_color=colour)
    figure.update_layout(
        title="Latency per part, by grid",
        xaxis_title="ms",
        yaxis_title="parts",
        height=360,
        bargap=0,
        barmode="stack",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    )
    return figure


MIN_TIMELINE_SPAN = timedelta(hours=1)  # the narrowest time axis of the model timeline


def model_timeline_figure(
    usage: list[ModelUsage], zone: str = "UTC", picked: DayRange | None = None
) -> go.Figure:
    """Which model version judged the parts, when: times of the time `zone` names, over the
    days `picked` (from the first's midnight to the end of the last), as the rates and volume
    beside it, and beyond them where a part was judged again later."""
    figure = go.Figure()
    for item in usage:
        name = chart(item.model_name or "unknown")
        figure.add_trace(
            go.Scatter(
                x=[item.first_at, item.last_at],
                y=[name, name],
                mode="lines+markers",
                line={"width": 10},
                name=name,
                # (The name by reference, not in the template: "%{...}" in it would be read.)
                hovertemplate=f"%{{y}}: {item.inspections} inspections<extra></extra>",
            )
        )
    figure.update_xaxes(title_text=f"inspected ({zone})")
    moments = [m for item in usage for m in (item.first_at, item.last_at) if m is not None]
    if picked is not None:
        # (Left to Plotly, a month picked showed only the hours a version judged parts in.)
        start = datetime.combine(picked[0], time())
        end = datetime.combine(picked[1], time()) + timedelta(days=1)
        figure.update_xaxes(range=[min([start, *moments]), max([end, *moments])])
    elif moments and max(moments) - min(moments) < MIN_TIMELINE_SPAN:
        # (One batch of a few seconds spread its axis over milliseconds: "07:27:28.4365".)
        middle = min(moments) + (max(moments) - min(moments)) / 2
        figure.update_xaxes(range=[middle - MIN_TIMELINE_SPAN / 2, middle + MIN_TIMELINE_SPAN / 2])
    figure.update_layout(
        title="Model version in use", height=160 + 40 * max(len(usage), 1), showlegend=False
    )
    return figure


@dataclass(frozen=True)
class ShownBox:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    counted: bool
    missed: bool = False  # added by a reviewer, not found by the model
    colour: Colour = CLASS_COLOURS[0]  # its class's (drawing.class_colour), as Inspect draws it


LABEL_PX = 24  # screen pixels a box's label needs above the box
NARROWEST_PX = 600  # the narrowest the Review page's image column is drawn (3/5 of the page)


SHOWN_SIDE = 1024  # pixels of the longer side sent to the browser for review
GRID_POINTS = 160  # invisible points along the longer side, for the box selection


def review_figure(pixels_rgb, boxes: list[ShownBox]) -> go.Figure:  # type: ignore[no-untyped-def]
    """The part with its predictions, on which a reviewer drags a box around a missed defect.

    Plotly selects data points, not image pixels: an invisible grid of points lets the box
    selection report its corners in image coordinates. The axes stay in the image's own pixels
    while the browser gets the image scaled to SHOWN_SIDE, as a PNG, with a grid of fixed
    size: a 9 MP camera frame sent whole as a JSON array, with a point every 4 pixels, took
    tens of seconds to draw and gigabytes of the server's memory (bench/review_figure.py).
    """
    from PIL import Image

    height, width = pixels_rgb.shape[:2]
    scale = max(1.0, max(width, height) / SHOWN_SIDE)
    shown = Image.fromarray(pixels_rgb)
    if scale > 1:
        shown = shown.resize((round(width / scale), round(height / scale)), Image.Resampling.BOX)
    png = io.BytesIO()
    shown.save(png, format="PNG", compress_level=1)
    source = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    scale_x, scale_y = width / shown.width, height / shown.height
    figure = go.Figure(
        go.Image(
            source=source,
            # x0, y0 place the first shown pixel's centre. Boxes are in pixel edges (image
            # pixel i spans i to i + 1), so a shown pixel, covering scale_x x scale_y image
            # pixels, spans j * scale_x to (j + 1) * scale_x: centred on pixel centres, every
            # box was drawn half a source pixel up and left of the pixels it holds.
            x0=scale_x / 2,
            y0=scale_y / 2,
            dx=scale_x,
            dy=scale_y,
            hoverinfo="skip",
        )
    )
    step = max(4, math.ceil(max(width, height) / GRID_POINTS))
    xs = list(range(0, width, step))
    ys = list(range(0, height, step))
    figure.add_trace(
        go.Scatter(
            x=[x for _ in ys for x in xs],
            y=[y for y in ys for _ in xs],
            mode="markers",
            marker={"opacity": 0, "size": 2},
            hoverinfo="skip",
            showlegend=False,
        )
    )
    figure_height = min(720, max(360, height))
    # Image pixels a label takes on the screen (the image fits the figure's height or the
    # column's width): a box at the image's top edge (defects often touch it) had its label
    # drawn above the figure, cut off, and the boxes could not be told apart.
    label_height = LABEL_PX / min(figure_height / height, NARROWEST_PX / width)
    for box in boxes:
        colour = hex_colour(box.colour)
        # (Below its threshold dashed, as Inspect draws it; a reviewer's missed defect dotted.)
        dash = "dot" if box.missed else "solid" if box.counted else "dash"
        figure.add_shape(
            type="rect",
            x0=box.x1,
            y0=box.y1,
            x1=box.x2,
            y1=box.y2,
            line={"color": colour, "width": 2, "dash": dash},
        )
        figure.add_annotation(
            x=box.x1,
            y=box.y1,
            text=chart(box.label),  # (a class name, as typed)
            showarrow=False,
            xanchor="left",
            yanchor="bottom" if box.y1 >= label_height else "top",  # inside the box at the top
            font={"color": hex_colour(text_colour(box.colour)), "size": 11},
            bgcolor=colour,
        )
    figure.update_xaxes(visible=False, range=[0, width])
    figure.update_yaxes(visible=False, range=[height, 0], scaleanchor="x")
    figure.update_layout(
        dragmode="select",
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        height=figure_height,
    )
    return figure


def selected_box(
    selection: dict | None,  # type: ignore[type-arg]
    image_size: tuple[int | None, int | None] = (None, None),
) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) of the first box a reviewer dragged, from Streamlit's selection state,
    clipped to the image (`image_size`: width, height): a drag may start in the margin beside
    it, and its negative corner stopped the page. None where nothing of it lies on the image."""
    boxes = (selection or {}).get("box") or []
    if not boxes:
        return None
    xs, ys = sorted(boxes[0]["x"]), sorted(boxes[0]["y"])
    width, height = image_size
    x_max, y_max = float(width or math.inf), float(height or math.inf)
    x1, x2 = (min(max(x, 0.0), x_max) for x in (xs[0], xs[-1]))
    y1, y2 = (min(max(y, 0.0), y_max) for y in (ys[0], ys[-1]))
    if x2 <= x1 or y2 <= y1:
        return None
    return (round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))

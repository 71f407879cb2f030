"""Hand-built inline SVG charts of the clinician page (no external assets, no JavaScript).

Two charts: the PHQ-9 trajectory over the Kroenke severity bands with the
sessions marked, and the forecast risk curve with its band, the threshold
and the suggested session-by date. Both scale with the page (``viewBox``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

W, H = 820, 300
LEFT, RIGHT, TOP, BOTTOM = 46, 118, 16, 40
BANDS: tuple[tuple[float, float, str, str], ...] = (
    (0, 5, "minimal", "#e6f4ea"),
    (5, 10, "mild", "#f3f8e3"),
    (10, 15, "moderate", "#fff6da"),
    (15, 20, "moderately severe", "#fde9d6"),
    (20, 27, "severe", "#f9dcd8"),
)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _ticks(start: pd.Timestamp, end: pd.Timestamp) -> list[pd.Timestamp]:
    """Month starts (or week starts for short ranges) between start and end."""
    span = (end - start).days
    if span <= 70:
        ticks = pd.date_range(start.normalize(), end, freq="W-MON")
    else:
        step = max(1, int(np.ceil(span / 30.5 / 8)))
        ticks = pd.date_range(start.normalize() + pd.offsets.MonthBegin(0), end, freq=f"{step}MS")
    return list(ticks)


def _fmt_tick(t: pd.Timestamp, span_days: int) -> str:
    return t.strftime("%d %b") if span_days <= 70 else t.strftime("%b %Y")


def _phq9_frame(
    start: pd.Timestamp,
    end: pd.Timestamp,
    span: int,
    x: Callable[[Any], float],
    y: Callable[[float], float],
) -> list[str]:
    """SVG elements of the PHQ-9 background: severity bands, score axis and date grid."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out: list[str] = []
    for lo, hi, name, colour in BANDS:
        out.append(
            f'<rect x="{LEFT}" y="{y(hi):.1f}" width="{pw}" height="{y(lo) - y(hi):.1f}" '
            f'fill="{colour}"/>'
        )
        out.append(
            f'<text x="{LEFT + pw + 6}" y="{(y(lo) + y(hi)) / 2 + 4:.1f}" class="band">'
            f"{_e(name)}</text>"
        )
    for v in (0, 5, 10, 15, 20, 27):
        out.append(
            f'<text x="{LEFT - 8}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v}</text>'
        )
    for t in _ticks(start, end):
        out.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{TOP + ph}" class="grid"/>'
            f'<text x="{x(t):.1f}" y="{TOP + ph + 16}" class="axis" text-anchor="middle">'
            f"{_e(_fmt_tick(t, span))}</text>"
        )
    return out


def _phq9_session_lines(sessions: pd.DataFrame, x: Callable[[Any], float]) -> list[str]:
    """SVG vertical lines marking each session, classed by kind."""
    ph = H - TOP - BOTTOM
    out: list[str] = []
    for d, kind in zip(sessions["date"], sessions["kind"], strict=True):
        cls = "induction" if kind == "induction" else "maintenance"
        out.append(
            f'<line x1="{x(d):.1f}" x2="{x(d):.1f}" y1="{TOP}" y2="{TOP + ph}" class="{cls}">'
            f"<title>{_e(kind)} session {pd.Timestamp(d):%Y-%m-%d}</title></line>"
        )
    return out


def _phq9_points(
    assessments: pd.DataFrame, x: Callable[[Any], float], y: Callable[[float], float]
) -> list[str]:
    """SVG PHQ-9 polyline and points, plus top-edge marks for flags without a total."""
    out: list[str] = []
    a = assessments[assessments["phq9"].notna()].sort_values("date")
    if len(a):
        pts = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in zip(a["date"], a["phq9"], strict=True))
        out.append(f'<polyline points="{pts}" class="phq9"/>')
        for d, v, s in zip(a["date"], a["phq9"], a["safety"], strict=True):
            flag = " flag" if s else ""
            label = f"PHQ-9 {int(v)} on {pd.Timestamp(d):%Y-%m-%d}" + (f" ({s} flag)" if s else "")
            out.append(
                f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="{6 if s else 4}" '
                f'class="point{flag}"><title>{_e(label)}</title></circle>'
            )
    # Flagged answers without a PHQ-9 total (item 9 or C-SSRS alone) sit on the top edge.
    si_only = assessments[assessments["phq9"].isna() & assessments["safety"].notna()]
    for d, s, why in zip(si_only["date"], si_only["safety"], si_only["safety_reason"], strict=True):
        label = f"{why} on {pd.Timestamp(d):%Y-%m-%d} ({s} flag; no PHQ-9 total)"
        out.append(
            f'<rect x="{x(d) - 5:.1f}" y="{TOP + 1}" width="10" height="10" '
            f'class="point flag"><title>{_e(label)}</title></rect>'
        )
    return out


def _phq9_date_markers(
    as_of: pd.Timestamp, session_by: str | None, x: Callable[[Any], float]
) -> list[str]:
    """SVG lines and labels for today and the suggested session-by date."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = [
        f'<line x1="{x(as_of):.1f}" x2="{x(as_of):.1f}" y1="{TOP}" y2="{TOP + ph}" class="asof"/>'
        f'<text x="{x(as_of) + 3:.1f}" y="{TOP + ph - 6}" class="label">today</text>'
    ]
    if session_by:
        sx = x(session_by)
        right = sx > LEFT + pw * 0.7  # keep the label inside the plot, off the band names
        out.append(
            f'<line x1="{sx:.1f}" x2="{sx:.1f}" y1="{TOP}" y2="{TOP + ph}" class="suggest"/>'
            f'<text x="{sx - 4 if right else sx + 4:.1f}" y="{TOP + 26}" '
            f'class="label suggest-label" text-anchor="{"end" if right else "start"}">'
            f"next session by {pd.Timestamp(session_by):%d %b}</text>"
        )
    return out


def _phq9_legend() -> str:
    """SVG legend of the PHQ-9 chart (session kinds and the safety flag)."""
    lx = LEFT
    ly = H - 8
    return (
        f'<g class="legend"><line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" '
        f'class="induction"/><text x="{lx + 22}" y="{ly}">induction session</text>'
        f'<line x1="{lx + 150}" x2="{lx + 168}" y1="{ly - 4}" y2="{ly - 4}" class="maintenance"/>'
        f'<text x="{lx + 172}" y="{ly}">maintenance session</text>'
        f'<circle cx="{lx + 318}" cy="{ly - 4}" r="5" class="point flag"/>'
        f'<text x="{lx + 328}" y="{ly}">safety flag</text></g>'
    )


def phq9_chart(
    assessments: pd.DataFrame,
    sessions: pd.DataFrame,
    as_of: pd.Timestamp,
    session_by: str | None = None,
) -> str:
    """SVG of the PHQ-9 trajectory.

    Parameters
    ----------
    assessments : DataFrame
        Scored assessments (``date``, ``phq9``, ``safety``).
    sessions : DataFrame
        Sessions (``date``, ``kind``).
    as_of : Timestamp
        Forecast date (marked; the axis extends to it).
    session_by : str, optional
        Suggested session-by date (marked when given).
    """
    dates = list(assessments["date"]) + list(sessions["date"]) + [as_of]
    if session_by:
        dates.append(pd.Timestamp(session_by))
    start = min(dates) - pd.Timedelta(days=3)
    end = max(dates) + pd.Timedelta(days=3)
    span = max(1, (end - start).days)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t: Any) -> float:
        return LEFT + pw * (pd.Timestamp(t) - start).days / span

    def y(v: float) -> float:
        return TOP + ph * (1 - v / 27)

    out = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
        'aria-labelledby="phq9-title" xmlns="http://www.w3.org/2000/svg">',
        '<title id="phq9-title">PHQ-9 totals over time with severity bands and sessions</title>',
    ]
    out.extend(_phq9_frame(start, end, span, x, y))
    out.extend(_phq9_session_lines(sessions, x))
    out.extend(_phq9_points(assessments, x, y))
    out.extend(_phq9_date_markers(as_of, session_by, x))
    out.append(_phq9_legend())
    out.append("</svg>")
    return "".join(out)


def _risk_axes(
    top: float,
    dmax: float,
    as_of: pd.Timestamp,
    x: Callable[[float], float],
    y: Callable[[float], float],
) -> list[str]:
    """SVG risk gridlines with percentage labels and the date labels along the bottom."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out: list[str] = []
    for p in np.arange(0, top + 1e-9, 0.1 if top <= 0.6 else 0.2):
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y(p):.1f}" y2="{y(p):.1f}" class="grid"/>'
            f'<text x="{LEFT - 8}" y="{y(p) + 4:.1f}" class="axis" text-anchor="end">'
            f"{p:.0%}</text>"
        )
    step = 7 if dmax <= 56 else 14
    for d in np.arange(0, dmax + 1, step):
        t = as_of + pd.Timedelta(days=int(d))
        out.append(
            f'<text x="{x(d):.1f}" y="{TOP + ph + 16}" class="axis" text-anchor="middle">'
            f"{t:%d %b}</text>"
        )
    return out


def _risk_session_by(
    answer: Mapping[str, Any], as_of: pd.Timestamp, dmax: float, x: Callable[[float], float]
) -> list[str]:
    """SVG session-by line and label (none beside a safety flag or outside the curve)."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    sug = answer.get("suggestion") or {}
    # No session-by line beside a safety flag in force: the review comes first.
    if sug.get("session_by") and not (answer.get("safety") or {}).get("level"):
        sd = (pd.Timestamp(sug["session_by"]) - as_of).days
        if 0 <= sd <= dmax:
            sx = x(sd)
            return [
                f'<line x1="{sx:.1f}" x2="{sx:.1f}" y1="{TOP}" y2="{TOP + ph}" class="suggest"/>'
                f'<text x="{min(sx + 4, LEFT + pw - 4):.1f}" y="{TOP + 14}" class="label '
                f'suggest-label" text-anchor="{"start" if sx < LEFT + pw * 0.7 else "end"}">'
                f"by {pd.Timestamp(sug['session_by']):%d %b %Y}</text>"
            ]
    return []


def risk_chart(answer: Mapping[str, Any]) -> str | None:
    """SVG of the forecast risk curve (None when the answer has no curve)."""
    risk = answer.get("risk") or {}
    daily = risk.get("daily") or {}
    days = np.asarray(daily.get("days") or [], dtype=float)
    vals = np.array([np.nan if v is None else v for v in daily.get("risk") or []], dtype=float)
    if days.size == 0 or np.all(np.isnan(vals)):
        return None
    lower = np.array([np.nan if v is None else v for v in daily.get("lower") or []], dtype=float)
    upper = np.array([np.nan if v is None else v for v in daily.get("upper") or []], dtype=float)
    as_of = pd.Timestamp(answer["as_of"])
    sug = answer.get("suggestion") or {}
    threshold = sug.get("threshold")
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    dmax = float(days.max()) or 1.0
    top = max(0.5, float(np.nanmax(np.concatenate([vals, upper if upper.size else vals]))) * 1.1)
    top = min(1.0, np.ceil(top * 10) / 10)

    def x(d: float) -> float:
        return LEFT + pw * d / dmax

    def y(p: float) -> float:
        return TOP + ph * (1 - p / top)

    out = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="risk-title" '
        'xmlns="http://www.w3.org/2000/svg">',
        '<title id="risk-title">Forecast risk that the benefit has waned, by date</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="plot"/>',
    ]
    out.extend(_risk_axes(top, dmax, as_of, x, y))
    if sug.get("window_start") and sug.get("window_end"):
        ws = (pd.Timestamp(sug["window_start"]) - as_of).days
        we = (pd.Timestamp(sug["window_end"]) - as_of).days
        out.append(
            f'<rect x="{x(ws):.1f}" y="{TOP}" width="{max(1.0, x(we) - x(ws)):.1f}" '
            f'height="{ph}" class="window"><title>suggested window</title></rect>'
        )
    ok = ~np.isnan(lower) & ~np.isnan(upper) if lower.size == days.size else None
    if ok is not None and ok.any():
        up = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in zip(days[ok], upper[ok], strict=True))
        lo = " ".join(
            f"{x(d):.1f},{y(v):.1f}" for d, v in zip(days[ok][::-1], lower[ok][::-1], strict=True)
        )
        out.append(
            f'<polygon points="{up} {lo}" class="band-area"><title>uncertainty band'
            "</title></polygon>"
        )
    good = ~np.isnan(vals)
    pts = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in zip(days[good], vals[good], strict=True))
    out.append(f'<polyline points="{pts}" class="risk"/>')
    if threshold is not None and float(threshold) <= top:
        ty = y(float(threshold))
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{ty:.1f}" y2="{ty:.1f}" class="threshold"/>'
            f'<text x="{LEFT + pw + 6}" y="{ty + 4:.1f}" class="label">threshold '
            f"{float(threshold):.0%}</text>"
        )
    out.extend(_risk_session_by(answer, as_of, dmax, x))
    out.append(
        f'<text x="{LEFT + pw / 2:.1f}" y="{H - 6}" class="axis" text-anchor="middle">'
        f"date (forecast made {as_of:%d %b %Y})</text>"
    )
    out.append("</svg>")
    return "".join(out)


def horizon_rows(answer: Mapping[str, Any]) -> Sequence[dict[str, Any]]:
    """Rows of the risk table: horizon, date, risk and band as percentages."""
    as_of = pd.Timestamp(answer["as_of"])
    rows = []
    for h in (answer.get("risk") or {}).get("horizons") or []:
        if h.get("risk") is None:
            continue
        band = (
            f"{h['lower']:.0%} - {h['upper']:.0%}"
            if h.get("lower") is not None and h.get("upper") is not None
            else "-"
        )
        rows.append(
            {
                "days": h["days"],
                "date": (as_of + pd.Timedelta(days=int(h["days"]))).strftime("%d %b %Y"),
                "risk": f"{h['risk']:.0%}",
                "band": band,
            }
        )
    return rows

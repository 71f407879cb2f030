"""Self-contained HTML report of an evaluation (plots inline as base64 PNG, matplotlib Agg)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

_COLORS = {"model": "#1f77b4", "cox": "#ff7f0e", "km": "#7f7f7f", "oracle": "#2ca02c"}


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return ('<img alt="plot" src="data:image/png;base64,'
            + base64.b64encode(buf.getvalue()).decode() + '">')


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "-" if not np.isfinite(v) else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_table(models: dict[str, Any], horizons: list[int]) -> str:
    """One row per model: global C-indices, IBS and per-horizon AUC / Brier / ICI / CITL."""
    header = ["model", "n", "events", "Harrell C", "Uno C", "IBS"]
    for h in horizons:
        header += [f"AUC {h}d", f"Brier {h}d", f"ICI {h}d", f"CITL {h}d"]
    rows = []
    for name, block in models.items():
        o = block["overall"]
        row = [name, o["n"], o["events"], o["harrell_c"], o.get("uno_c"), o.get("ibs")]
        for h in horizons:
            hh = o["by_horizon"].get(str(h), {})
            row += [hh.get("auc"), hh.get("brier"), hh.get("ici"), hh.get("citl")]
        rows.append(row)
    return _table(header, rows)


def _mean_p95(r: dict[str, Any], key: str) -> str:
    return f"{_fmt(r.get(key + '_mean'))} (95th pct {_fmt(r.get(key + '_p95'))})"


def calibration_slope_table(models: dict[str, Any], horizons: list[int]) -> str:
    """Calibration slope (95 % interval) per model and horizon (HTML)."""
    rows = []
    for name, res in models.items():
        by_h = (res.get("overall") or {}).get("by_horizon") or {}
        cells = []
        for h in horizons:
            hh = by_h.get(str(h)) or {}
            ci = hh.get("slope_ci95")
            cells.append("-" if hh.get("slope") is None else
                         f"{_fmt(hh['slope'], 2)} ({_fmt(ci[0], 2)}-{_fmt(ci[1], 2)})")
        if any(c != "-" for c in cells):
            rows.append([name, *cells])
    if not rows:
        return ""
    return ("<p class='note'>Calibration slope (95 % interval): the Kaplan-Meier "
            "pseudo-observations at h regressed on log(-log(1 - risk)) through a "
            "complementary log-log link. 1 = the risks spread as much as the outcomes, below "
            "1 too spread (over-fitting), above 1 not spread enough. metrics.json also holds "
            "the Cox version (slope_cox), which assumes proportional hazards within [0, h] "
            "and reads too high when hazard ratios fade over time.</p>"
            + _table(["model", *[f"{h} d" for h in horizons]], rows))


def calibrated_reference_table(fp: dict[str, Any]) -> str:
    """The ICI a calibrated model reads on these rows, beside the model's own (HTML)."""
    ref = fp.get("calibrated_reference")
    if not ref:
        return ""
    model = ((fp.get("models") or {}).get("model") or {}).get("overall") or {}
    rows = []
    for h, r in ref["by_horizon"].items():
        m = (model.get("by_horizon") or {}).get(h) or {}
        rows.append([f"{h} d", _fmt(m.get("ici")), _mean_p95(r, "ici"),
                     _fmt(m.get("ici_austin")), _mean_p95(r, "ici_austin")])
    return ("<p class='note'>What the ICI of a perfectly calibrated model would be on these "
            f"rows: {ref['reps']} draws of outcomes from the model's own risk curves, with "
            "the rows' censoring kept. Where most follow-up ends early (boosters), the ICI "
            "estimates are well above 0 even for calibrated risks; a model ICI inside the "
            "reference range shows no miscalibration the data can detect. The draws use "
            "exact waning times, not the assessment intervals of the real outcomes, so the "
            "reference is approximate.</p>"
            + _table(["horizon", "model ICI", "calibrated reference ICI",
                      "model ICI (Austin's smoother)", "calibrated reference (Austin's)"], rows))


def known_share_note(models: dict[str, Any], horizons: list[int]) -> str:
    """How many rows' status at each horizon is known (waned by h or followed past h).

    A calibration figure at a horizon that most rows do not reach (censored
    before it, e.g. by the next booster) rests on the rows that do, and
    assumes that their censoring says nothing about their waning given the
    prediction; the note puts that share beside the plot.
    """
    main = models.get("model") or next(iter(models.values()), None)
    by_h = ((main or {}).get("overall") or {}).get("by_horizon", {})
    shares = [(h, by_h.get(str(h), {}).get("share_known")) for h in horizons]
    if not any(v is not None for _, v in shares):
        return ""
    listed = ", ".join(f"{h} d {_fmt(v, 2)}" for h, v in shares)
    return ("<p class='note'>Share of rows whose status at h is known (waned by h, or "
            f"followed past h): {listed}. Where it is small, the observed risk at h rests "
            "on the rows that reach h, and its calibration figures assume that being "
            "censored before h says nothing about waning given the prediction.</p>")


def calibration_plot(models: dict[str, Any], horizons: list[int]) -> str:
    """Decile calibration points per model and the smoothed curve of the main model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(horizons), figsize=(3.2 * len(horizons), 3.3), squeeze=False)
    for ax, h in zip(axes[0], horizons, strict=True):
        top = 0.05
        for name, block in models.items():
            hh = block["overall"]["by_horizon"].get(str(h), {})
            pts = np.asarray(hh.get("deciles") or [], dtype=float).reshape(-1, 3)
            if len(pts):
                ax.plot(pts[:, 0], pts[:, 1], "o", ms=4, color=_COLORS.get(name), label=name)
                top = max(top, float(np.nanmax(pts[:, :2])))
            curve = hh.get("curve")
            if curve and name == "model":
                ax.plot(curve["predicted"], curve["observed"], "-", color=_COLORS["model"],
                        lw=1)
                top = max(top, float(np.nanmax(curve["predicted"])))
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set_xlim(0, top * 1.05)
        ax.set_ylim(0, top * 1.05)
        ax.set_title(f"{h} days")
        ax.set_xlabel("predicted risk")
        ax.set_ylabel("observed risk (KM)")
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def horizon_plot(models: dict[str, Any], horizons: list[int], key: str, label: str) -> str:
    """A metric (AUC or Brier) against the horizon, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, block in models.items():
        vals = [block["overall"]["by_horizon"].get(str(h), {}).get(key) for h in horizons]
        vals = [np.nan if v is None else v for v in vals]
        ax.plot(horizons, vals, "o-", color=_COLORS.get(name), label=name)
    ax.set_xlabel("horizon (days)")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    return _png(fig)


def fairness_table(fair: dict[str, Any], horizon: int = 28) -> str:
    """Subgroup rows: n, events, Harrell C, AUC / Brier / ICI / CITL at ``horizon``."""
    rows = []
    for attr, levels in fair.items():
        for level, m in levels.items():
            hh = m.get("by_horizon", {}).get(str(horizon), {})
            rows.append([attr, level, m.get("n"), m.get("events"), m.get("harrell_c"),
                         hh.get("auc"), hh.get("brier"), hh.get("ici"), hh.get("citl")])
    return _table(["attribute", "group", "n", "events", "Harrell C", f"AUC {horizon}d",
                   f"Brier {horizon}d", f"ICI {horizon}d", f"CITL {horizon}d"], rows)


def render(metrics: dict[str, Any], *, policy_html: str | None = None) -> str:
    """The whole report as one HTML page."""
    horizons = [int(h) for h in metrics.get("horizons", [])]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>kap-forecast evaluation</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}"
        ".note{color:#555;font-size:13px}",
        "</style></head><body>",
        "<h1>kap-forecast: model evaluation</h1>",
        f"<p>Model version <code>{_fmt(metrics.get('model_version'))}</code>, kind "
        f"<code>{_fmt(metrics.get('model_kind'))}</code>; data <code>"
        f"{_fmt(metrics.get('data_fingerprint'))}</code>.</p>",
        "<p class='note'>Decision support only; forecasts never assess suicide risk.</p>",
    ]
    cv = metrics.get("cv")
    fp = (cv or {}).get("forecast_point") or {}
    if fp.get("models"):
        rd = fp.get("response_day") or {}
        parts += [
            f"<h2>Headline: cross-validation at the first forecast point ({cv['folds']} "
            "patient-grouped folds)</h2>",
            f"<p>{fp['n_patients']} patients, {fp['n_episodes']} episodes, {fp['n_events']} "
            f"with observed waning; the response assessment fell {_fmt(rd.get('median'), 0)} "
            f"days (median; {_fmt(rd.get('min'), 0)}-{_fmt(rd.get('max'), 0)}) after the "
            "session.</p>",
            f"<p class='note'>{html.escape(str(fp.get('note', '')))}</p>",
            metrics_table(fp["models"], horizons),
        ]
        if "on_oracle_episodes" in fp:
            parts += [f"<h3>On the {fp.get('oracle_matched_episodes')} episodes covered by the "
                      "oracle</h3>",
                      metrics_table({**fp["on_oracle_episodes"],
                                     "oracle": fp["models"]["oracle"]}, horizons)]
        parts += ["<h3>Calibration at the first forecast point</h3>",
                  known_share_note(fp["models"], horizons),
                  calibration_plot(fp["models"], horizons),
                  calibration_slope_table(fp["models"], horizons),
                  calibrated_reference_table(fp),
                  horizon_plot(fp["models"], horizons, "auc", "time-dependent AUC")]
        if "targets" in metrics:
            t = metrics["targets"]
            parts += ["<h3>Targets (first forecast point)</h3>", _table(["figure", "value"], [
                [k, str(v) if isinstance(v, dict) else v] for k, v in t.items()
                if k != "episode_start"])]
        fair = fp["models"].get("model", {}).get("fairness")
        if fair:
            parts += ["<h3>Fairness at the first forecast point (main model, 28 days)</h3>",
                      fairness_table(fair)]
    if cv:
        parts += [
            f"<h2>Secondary: cross-validation at episode start ({cv['folds']} patient-grouped "
            "folds)</h2>",
            "<p class='note'>Landmark 0, before the response is known: the service never "
            "forecasts there, but every model and the oracle can be compared on it.</p>",
            f"<p>{cv['n_patients']} patients, {cv['n_episodes']} episodes, {cv['n_events']} "
            "with observed waning. 'model' is the evaluated version's spec refitted per fold; "
            "cox and km are the baselines; oracle is the simulator's true risk.</p>",
            metrics_table(cv["models"], horizons),
        ]
        if "on_oracle_episodes" in cv:
            parts += [f"<h3>On the {cv.get('oracle_matched_episodes')} episodes covered by the "
                      "oracle</h3>",
                      metrics_table({**cv["on_oracle_episodes"],
                                     "oracle": cv["models"]["oracle"]}, horizons)]
        parts += ["<h3>Calibration</h3>", known_share_note(cv["models"], horizons),
                  calibration_plot(cv["models"], horizons),
                  horizon_plot(cv["models"], horizons, "auc", "time-dependent AUC"),
                  horizon_plot(cv["models"], horizons, "brier", "Brier score")]
        if "targets" in metrics and "episode_start" in metrics["targets"]:
            t = metrics["targets"]["episode_start"]
            parts += ["<h3>Target figures at episode start</h3>", _table(["figure", "value"], [
                [k, str(v) if isinstance(v, dict) else v] for k, v in t.items()])]
        fair = cv["models"].get("model", {}).get("fairness")
        if fair:
            parts += ["<h3>Fairness at episode start (main model, 28 days)</h3>",
                      fairness_table(fair)]
        if cv.get("errors"):
            parts += ["<h3>Fold errors</h3>", _table(["model", "errors"], [
                [k, "; ".join(v)] for k, v in cv["errors"].items()])]
        lc = cv.get("landmark_conditional")
        if lc:
            parts += ["<h3>Landmark-conditional (dynamic model, all landmark rows)</h3>",
                      f"<p class='note'>{_fmt(lc.get('note'))}</p>",
                      metrics_table({"model": {"overall": lc}}, horizons)]
    ho = metrics.get("holdout")
    if ho:
        parts += [f"<h2>Holdout: the version applied to {ho['n_patients']} other patients</h2>"]
        hfp = ho.get("forecast_point") or {}
        if hfp.get("models"):
            parts += ["<h3>Holdout, first forecast point</h3>",
                      metrics_table(hfp["models"], horizons), calibrated_reference_table(hfp)]
        parts += ["<h3>Holdout, episode start</h3>", metrics_table(ho["models"], horizons),
                  calibration_plot(ho["models"], horizons)]
        if ho.get("landmark_conditional"):
            parts += ["<h3>Holdout, landmark-conditional</h3>",
                      metrics_table({"model": {"overall": ho["landmark_conditional"]}}, horizons)]
    if policy_html:
        parts += ["<h2>Policy replay</h2>", policy_html]
    parts += ["<h2>Method</h2>", f"<p class='note'>{_fmt(metrics.get('conversion'))}</p>",
              "<p class='note'>Harrell's C ranks by the 28-day risk; Uno's C is truncated at the "
              "longest horizon; AUC and Brier are IPCW (scikit-survival); ICI/E50/E90 follow "
              "Austin, Harrell &amp; van Klaveren (2020), the observed risk smoothed from "
              "Kaplan-Meier pseudo-observations at each horizon (Austin's Cox smoother, which "
              "assumes proportional hazards within [0, h], is kept as ici_austin in "
              "metrics.json); CITL = Turnbull observed risk minus mean predicted risk.</p>",
              "</body></html>"]
    return "\n".join(parts)

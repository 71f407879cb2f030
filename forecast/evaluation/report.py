"""Self-contained HTML report of an evaluation (plots inline as base64 PNG, matplotlib Agg)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

_COLORS = {"model": "#1f77b4", "cox": "#ff7f0e", "km": "#7f7f7f", "oracle": "#2ca02c"}


def _png(fig: Any, alt: str) -> str:
    """The figure as an inline PNG with ``alt``: what the image shows, in words."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return (f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,'
            + base64.b64encode(buf.getvalue()).decode() + '">')


def _words(values: list[Any], digits: int = 2) -> str:
    return ", ".join("-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"
                     for v in values)


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
    rows, notes = [], []
    for name, block in models.items():
        o = block["overall"]
        row = [name, o["n"], o["events"], o["harrell_c"], o.get("uno_c"), o.get("ibs")]
        for h in horizons:
            hh = o["by_horizon"].get(str(h), {})
            row += [hh.get("auc"), hh.get("brier"), _ici_cell(hh), hh.get("citl")]
            if hh.get("auc_note"):
                notes.append(f"{name}, AUC {h}d: {hh['auc_note']}")
        rows.append(row)
    floor = any("ici_floor" in hh for b in models.values()
                for hh in ((b.get("overall") or {}).get("by_horizon") or {}).values())
    text = ("<p class='note'>ICI: the published index (Austin, Harrell &amp; van Klaveren "
            "2020)" + ("; in brackets its noise floor, the mean ICI a perfectly calibrated "
                       "model reads on the same rows" if floor else "") + ".</p>")
    why = ("<p class='note'>AUC not computed: " + "; ".join(html.escape(n) for n in notes)
           + ".</p>") if notes else ""
    return _table(header, rows) + text + why


def _ici_cell(hh: dict[str, Any]) -> str:
    """The published ICI and, when computed, its noise floor (mean) in brackets."""
    fl = hh.get("ici_floor")
    return _fmt(hh.get("ici")) + (f" ({_fmt(fl[0])})" if fl else "")


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
                     _fmt(m.get("ici_pseudo")), _mean_p95(r, "ici_pseudo"),
                     _fmt(m.get("ici_austin")), _mean_p95(r, "ici_austin")])
    return ("<p class='note'>What the ICI of a perfectly calibrated model would be on these "
            f"rows: {ref['reps']} draws of outcomes from the model's own risk curves, with "
            "the rows' censoring kept. Where most follow-up ends early (boosters), the ICI "
            "estimates are well above 0 even for calibrated risks; a model ICI inside the "
            "reference range shows no miscalibration the data can detect. The draws use "
            "exact waning times, not the assessment intervals of the real outcomes, so the "
            "reference is approximate.</p>"
            + _table(["horizon", "model ICI (published)", "calibrated reference ICI",
                      "model ICI (pseudo-observation variant)", "calibrated reference (pseudo)",
                      "model ICI (Austin's smoother censored at h, variant)",
                      "calibrated reference (Austin's)"], rows))


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
    names = ", ".join(models)
    icis = [((models.get("model") or {}).get("overall") or {}).get("by_horizon", {})
            .get(str(h), {}).get("ici") for h in horizons]
    alt = (f"Calibration at {', '.join(str(h) for h in horizons)} days: observed risk "
           f"(Kaplan-Meier, by decile of predicted risk) against predicted risk for {names}; "
           "points on the dashed diagonal are perfectly calibrated. ICI of the main model: "
           f"{_words(icis, 3)}.")
    return _png(fig, alt)


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
    lines = "; ".join(
        f"{name}: " + _words([block["overall"]["by_horizon"].get(str(h), {}).get(key)
                              for h in horizons])
        for name, block in models.items())
    alt = f"{label} by horizon ({', '.join(str(h) for h in horizons)} days). {lines}."
    return _png(fig, alt)


def survival_plot(curves: dict[str, Any], title: str) -> str:
    """Observed (Turnbull) and mean predicted survival, overall and per subgroup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("all episodes", curves["overall"])]
    for attr, levels in (curves.get("subgroups") or {}).items():
        panels += [(f"{attr}: {level}", c) for level, c in levels.items()]
    days = curves["days"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, c) in zip(axes.flat, panels, strict=False):
        ax.step(days, c["observed"], where="post", color="#000000",
                label="observed (Turnbull)")
        ax.plot(days, c["predicted"], "o--", color=_COLORS["model"], ms=3,
                label="mean predicted")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name} (n={c['n']})", fontsize=9)
        ax.set_xlabel("days after the forecast")
        ax.set_ylabel("benefit not yet waned")
    axes[0][0].legend(fontsize=7)
    o, pr = curves["overall"]["observed"], curves["overall"]["predicted"]
    alt = (f"{title}: share of episodes whose benefit has not yet waned at "
           f"{', '.join(str(d) for d in days[1:])} days, observed (Turnbull) "
           f"{_words(o[1:])} against mean predicted {_words(pr[1:])}, for all episodes"
           + (f" and {len(panels) - 1} subgroups (sex, age band, diagnosis)"
              if len(panels) > 1 else "") + ".")
    return _png(fig, alt)


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


def _head_parts(metrics: dict[str, Any]) -> list[str]:
    """The page head, title, file links and the model version line."""
    return [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>kap-forecast evaluation</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}"
        ".note{color:#4a4a4a;font-size:13px}a{color:#0645ad}",
        "</style></head><body>",
        "<main>",
        "<h1>kap-forecast: model evaluation</h1>",
        "<nav aria-label='Files of this report'><p>Files: <a href='model_card.md'>model card "
        "(model_card.md)</a> &middot; <a href='metrics.json'>all metrics (metrics.json)</a>"
        "</p></nav>",
        f"<p>Model version <code>{_fmt(metrics.get('model_version'))}</code>, kind "
        f"<code>{_fmt(metrics.get('model_kind'))}</code>; data <code>"
        f"{_fmt(metrics.get('data_fingerprint'))}</code>.</p>",
        "<p class='note'>Decision support only; forecasts never assess suicide risk.</p>",
    ]


def _forecast_point_parts(metrics: dict[str, Any], cv: dict[str, Any],
                          horizons: list[int]) -> list[str]:
    """The headline section: cross-validation at the first forecast point."""
    fp = cv.get("forecast_point") or {}
    rd = fp.get("response_day") or {}
    parts = [
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
    curves = fp["models"].get("model", {}).get("survival_curves")
    if curves:
        parts += ["<h3>Observed against predicted survival (first forecast point)</h3>",
                  "<p class='note'>Observed: Turnbull estimate of the share of episodes "
                  "whose benefit has not yet waned (interval-censored); predicted: the "
                  "mean of the model's survival at each horizon. Subgroups with fewer "
                  "than 20 episodes are not drawn.</p>",
                  survival_plot(curves, "Cross-validated survival at the first forecast "
                                        "point")]
    return parts


def _episode_start_parts(metrics: dict[str, Any], cv: dict[str, Any],
                         horizons: list[int]) -> list[str]:
    """The secondary section: cross-validation at episode start, fold errors, landmarks."""
    parts = [
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
    return parts


def _holdout_parts(ho: dict[str, Any], horizons: list[int]) -> list[str]:
    """The holdout section: the version applied to other patients."""
    parts = [f"<h2>Holdout: the version applied to {ho['n_patients']} other patients</h2>"]
    hfp = ho.get("forecast_point") or {}
    if hfp.get("models"):
        parts += ["<h3>Holdout, first forecast point</h3>",
                  metrics_table(hfp["models"], horizons), calibrated_reference_table(hfp)]
        hcurves = hfp["models"].get("model", {}).get("survival_curves")
        if hcurves:
            parts += ["<h3>Holdout: observed against predicted survival</h3>",
                      survival_plot(hcurves, "Holdout survival at the first forecast point")]
    parts += ["<h3>Holdout, episode start</h3>", metrics_table(ho["models"], horizons),
              calibration_plot(ho["models"], horizons)]
    if ho.get("landmark_conditional"):
        parts += ["<h3>Holdout, landmark-conditional</h3>",
                  metrics_table({"model": {"overall": ho["landmark_conditional"]}}, horizons)]
    return parts


def _method_parts(metrics: dict[str, Any]) -> list[str]:
    """The method notes and the end of the page."""
    return ["<h2>Method</h2>", f"<p class='note'>{_fmt(metrics.get('conversion'))}</p>",
            "<p class='note'>Harrell's C ranks by the 28-day risk; Uno's C is truncated at the "
            "longest horizon; AUC and Brier are IPCW (scikit-survival); ICI/E50/E90 are "
            "the published ones (Austin, Harrell &amp; van Klaveren 2020: a Cox model of the "
            "whole follow-up on a 3-knot restricted cubic spline of log(-log(1 - risk))); "
            "metrics.json keeps two variants, labelled: ici_pseudo (Kaplan-Meier "
            "pseudo-observations at h on the spline) and ici_austin (the Cox smoother with "
            "the follow-up censored at h, 4 knots); CITL = Turnbull observed risk minus "
            "mean predicted risk.</p>",
            "</main></body></html>"]


def render(metrics: dict[str, Any], *, policy_html: str | None = None) -> str:
    """The whole report as one HTML page."""
    horizons = [int(h) for h in metrics.get("horizons", [])]
    parts = _head_parts(metrics)
    cv = metrics.get("cv")
    fp = (cv or {}).get("forecast_point") or {}
    if fp.get("models"):
        parts += _forecast_point_parts(metrics, cv, horizons)
    if cv:
        parts += _episode_start_parts(metrics, cv, horizons)
    ho = metrics.get("holdout")
    if ho:
        parts += _holdout_parts(ho, horizons)
    if policy_html:
        parts += ["<h2>Policy replay</h2>", policy_html]
    parts += _method_parts(metrics)
    return "\n".join(parts)

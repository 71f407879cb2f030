"""The evaluation report end to end: evaluate -> recorded -> approve -> promote -> served.

Also what the report shows: links to the model card and metrics, observed
(Turnbull) against predicted survival overall and per subgroup, meaningful
alt text, and an accessibility check in a real browser (headings, contrast,
alt text).
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from forecast import lifecycle, registry
from forecast.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(trained_registry, tmp_path_factory):
    """A private registry whose version was evaluated (2 folds, holdout = the same data)."""
    root = tmp_path_factory.mktemp("evaluated")
    models = root / "models"
    shutil.copytree(trained_registry.models_dir, models)
    out = root / "report"
    result = CliRunner().invoke(main, [
        "--quiet", "evaluate", str(trained_registry.data_dir), "--out", str(out), "--models",
        str(models), "--folds", "2", "--ci-reps", "0", "--holdout",
        str(trained_registry.data_dir)], env={"FORECAST_ACTOR": "dr-eval"})
    assert result.exit_code == 0, result.output
    return models, out, trained_registry.version


class _Doc(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.headings: list[int] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a.get("href"))
        elif len(tag) == 2 and tag[0] == "h" and tag[1].isdigit():
            self.headings.append(int(tag[1]))


def test_report_links_card_and_metrics_and_describes_every_image(evaluated) -> None:
    _models, out, _version = evaluated
    doc = _Doc()
    doc.feed((out / "report.html").read_text())
    assert {"model_card.md", "metrics.json"} <= set(doc.links)
    for name in ("model_card.md", "metrics.json"):
        assert (out / name).is_file()
    assert len(doc.imgs) >= 4
    for img in doc.imgs:
        alt = img.get("alt") or ""
        assert alt != "plot"
        assert len(alt) > 60, alt
    alts = " ".join(i["alt"] for i in doc.imgs)
    assert "observed (Turnbull)" in alts
    assert "Calibration at" in alts
    assert doc.headings[0] == 1
    assert doc.headings.count(1) == 1
    assert all(b - a <= 1 for a, b in zip(doc.headings, doc.headings[1:], strict=False))


def test_survival_curves_agree_with_the_calibration_in_the_large(evaluated) -> None:
    _models, out, _version = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["cv"]["forecast_point"]["models"]["model"]
    curves = block["survival_curves"]
    days = curves["days"]
    assert days[0] == 0
    overall = curves["overall"]
    assert overall["n"] == metrics["cv"]["forecast_point"]["n_episodes"]
    assert overall["observed"][0] == 1.0
    assert np.all(np.diff(overall["observed"]) <= 1e-9)
    assert np.all(np.diff(overall["predicted"]) <= 1e-9)
    # CITL (computed by the calibration code) = observed risk - mean predicted risk.
    j = days.index(28)
    citl = block["overall"]["by_horizon"]["28"]["citl"]
    assert (1 - overall["observed"][j]) - (1 - overall["predicted"][j]) == pytest.approx(
        citl, abs=2e-4)
    # Per subgroup: every drawn group is large enough and their sizes add up per attribute.
    for levels in curves["subgroups"].values():
        assert all(c["n"] >= 20 for c in levels.values())
        assert sum(c["n"] for c in levels.values()) <= overall["n"]


def test_from_evaluation_to_served_and_back(evaluated, make_app, tmp_path) -> None:
    from tests.fixtures.service import client_for

    models, _out, version = evaluated
    models = Path(shutil.copytree(models, tmp_path / "models"))
    ev = lifecycle.latest_evaluation(models, version)
    assert ev is not None
    assert ev["actor"] == "dr-eval"
    assert ev["summary"]["source"] == "holdout"
    run = CliRunner().invoke
    # Approval gates are generous here: the point is the recorded evaluation they rest on.
    approved = run(main, ["models", "approve", version, "--models", str(models),
                          "--max-citl", "1", "--max-ici", "1"])
    assert approved.exit_code == 0, approved.output
    assert ev["evaluation_id"] in approved.output
    assert run(main, ["models", "promote", version, "--models", str(models)]).exit_code == 0
    other = registry.save_version(registry.load(version, models).bundle, models_dir=models)
    c = client_for(make_app(models=models))
    assert c.get("/api/v1/model").json["version"] == version  # promoted, not the newer one
    listed = json.loads(run(main, ["models", "list", "--models", str(models), "--json"]).stdout)
    assert listed["live"] == version
    assert {v["version"]: v["status"] for v in listed["versions"]} == {
        version: "live", other: "candidate"}


def test_report_accessibility_in_a_browser(evaluated, tmp_path: Path) -> None:
    from tests.test_browser import DevTools, ensure_chromium

    _models, out, _version = evaluated
    browser = DevTools(ensure_chromium(), tmp_path / "profile")
    try:
        browser.open_page()
        browser.navigate((out / "report.html").resolve().as_uri())
        found = browser.js(_A11Y_JS)
    finally:
        browser.close()
    assert found["images"] >= 4
    assert found["bad_alt"] == []
    assert found["heading_skips"] == []
    assert found["h1"] == 1
    assert found["lang"] == "en"
    assert found["low_contrast"] == [], found["low_contrast"][:5]


# Checks in the page: alt text, heading order, WCAG AA contrast (4.5:1) of every text node.
_A11Y_JS = r"""
(() => {
  const lum = (rgb) => {
    const c = rgb.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map(v => v / 255)
      .map(v => v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4));
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const bg = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const b = getComputedStyle(e).backgroundColor;
      if (b && !b.startsWith('rgba(0, 0, 0, 0)') && b !== 'transparent') return b;
    }
    return 'rgb(255, 255, 255)';
  };
  const imgs = [...document.images];
  const badAlt = imgs.filter(i => !i.alt || i.alt.trim().length < 20 || i.alt === 'plot')
    .map(i => i.alt);
  const levels = [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => +h.tagName[1]);
  const skips = [];
  levels.forEach((l, k) => { if (k && l - levels[k - 1] > 1) skips.push([levels[k - 1], l]); });
  const low = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.textContent.trim()) continue;
    const el = n.parentElement;
    const a = lum(getComputedStyle(el).color), b = lum(bg(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push([el.tagName, n.textContent.trim().slice(0, 30), ratio]);
  }
  return {images: imgs.length, bad_alt: badAlt, heading_skips: skips,
          h1: levels.filter(l => l === 1).length, lang: document.documentElement.lang,
          low_contrast: low};
})()
"""

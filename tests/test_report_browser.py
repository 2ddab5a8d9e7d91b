"""Render the HTML report in headless Chromium: every image loads, no console errors, a screenshot.

Chromium is driven through its command line: ``--dump-dom`` of a copy of ``index.html`` with a small probe
script injected first in ``<head>`` (it records error events, ``console.error`` calls and, on ``load``, the
``complete``/``naturalWidth`` state of every image into a ``<pre id="__probe">``), plus Chromium's own console
log on stderr (``--enable-logging=stderr``), then ``--screenshot`` of the untouched report.  Set
``SHARPSCOPE_SCREENSHOTS=1`` to also copy the screenshot to ``reports/screenshots/``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sharpscope.report.html import build_report
from tests.synthetic import example_results

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "headless_shell")

PROBE = """<script>
window.__errs=[];
window.addEventListener('error',function(e){window.__errs.push(e.message||('failed to load '+
  ((e.target&&(e.target.src||e.target.href))||'resource').slice(0,80)));},true);
(function(){var ce=console.error;console.error=function(){
  window.__errs.push(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();
window.addEventListener('load',function(){
  var st=Array.prototype.map.call(document.images,function(i){
    return {ok:i.complete&&i.naturalWidth>0,w:i.naturalWidth,h:i.naturalHeight};});
  var d=document.createElement('pre');d.id='__probe';
  d.textContent=JSON.stringify({images:st,errors:window.__errs});document.body.appendChild(d);});
</script>"""


def _chromium() -> str | None:
    for c in CANDIDATES:
        path = shutil.which(c)
        if path:
            return path
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary (apt-get install chromium); browser check of the report skipped",
)


def _flags(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]


def _probe(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """Load ``page`` with the probe injected; return the probe's JSON and Chromium's console log lines."""
    probed = page.with_name("__probe_" + page.name)
    probed.write_text(
        page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8"
    )
    res = subprocess.run(
        [CHROMIUM, *_flags(tmp / "profile-dom"), "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r'<pre id="__probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"probe did not run (rc={res.returncode}): {res.stderr[-500:]}"
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    return json.loads(html.unescape(m.group(1))), console


def test_probe_detects_broken_images_and_errors(tmp_path):
    """The check itself can fail: a page with a broken image and a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
        '<script>console.error("boom"); notDefined();</script></body></html>'
    )
    probe, console = _probe(page, tmp_path)
    assert [i["ok"] for i in probe["images"]] == [False, False]
    assert any("boom" in e for e in probe["errors"])
    assert any("notDefined" in e for e in probe["errors"])
    assert any("notDefined" in ln for ln in console)


def test_report_renders_in_chromium(tmp_path):
    df = example_results(n_ckpt=3, seed=0)
    index = build_report(df, tmp_path / "report", n_boot=20, max_measures=1, figure_formats=("png",))
    n_img = index.read_text().count("<img ")
    assert n_img >= 5

    probe, console = _probe(index, tmp_path)
    assert len(probe["images"]) == n_img
    bad = [i for i, st in enumerate(probe["images"]) if not st["ok"]]
    assert not bad, f"images {bad} did not load: {probe['images']}"
    assert all(st["w"] > 100 and st["h"] > 100 for st in probe["images"])
    assert probe["errors"] == []
    assert console == []

    shot = tmp_path / "report.png"
    res = subprocess.run(
        [
            CHROMIUM,
            *_flags(tmp_path / "profile-shot"),
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            index.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and shot.is_file(), res.stderr[-500:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
    if os.environ.get("SHARPSCOPE_SCREENSHOTS"):
        dest = REPO / "reports" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "report_example.png")

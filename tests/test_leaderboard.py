"""`sparc-eval leaderboard build`: Markdown, CSV and a self-contained HTML page, checked in headless Chromium."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from record_factory import fake_sha, write_run

from sparc_eval.results.leaderboard import build_leaderboard

# Metric names and directions are the runners' own (record_factory); position_r2 is grounding's lower-is-better one.
RUNS = [
    ("tiny-clip", "synth-cls", "classification", {"top1": 0.5, "top5": None}),
    ("tiny-clip", "synth-retrieval", "retrieval", {"i2t_r1": 0.25, "t2i_r1": 0.2}),
    ("tiny-clip", "synth-grounding", "grounding", {"pointing_acc": 0.1, "position_r2": 0.02}),
    ("tiny-sparc", "synth-cls", "classification", {"top1": 0.55, "top5": None}),
    ("tiny-sparc", "synth-retrieval", "retrieval", {"i2t_r1": 0.3, "t2i_r1": 0.15}),
    ("tiny-sparc", "synth-grounding", "grounding", {"pointing_acc": 0.2, "position_r2": 0.01}),
    ("tiny-sparc", "synth-det", "detection", {"AP": 0.05}),
    ("openclip:ViT-B-16", "synth-cls", "classification", {"top1": 0.7, "top5": 0.9}),
]
LABELS = {ckpt: f"{ckpt} ({fake_sha(ckpt)[:8]})" for ckpt, *_ in RUNS}


@pytest.fixture
def board(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for i, (ckpt, task, runner, metrics) in enumerate(RUNS):
        write_run(
            results,
            ckpt=ckpt,
            task=task,
            runner=runner,
            metrics=metrics,
            version=1 + i % 2,
            created_at=f"2025-01-0{1 + i % 3}T12:00:00+00:00",
        )
    build_leaderboard(results, tmp_path / "leaderboard")
    return tmp_path / "leaderboard"


def test_markdown_and_csv(board):
    md = (board / "leaderboard.md").read_text()
    for ckpt in LABELS:
        assert fake_sha(ckpt) in md  # provenance: the full checkpoint sha256
    assert "synth-retrieval v2" in md and "## Provenance" in md
    rows = {r["checkpoint"]: r for r in csv.DictReader(io.StringIO((board / "leaderboard.csv").read_text()))}
    assert set(rows) == set(LABELS.values())
    for ckpt, task, _, metrics in RUNS:
        for metric, value in metrics.items():
            assert rows[LABELS[ckpt]][f"{task}/{metric}"] == ("" if value is None else str(value))
    assert rows[LABELS["tiny-clip"]]["synth-det/AP"] == ""
    assert rows[LABELS["tiny-sparc"]]["evaluated"] == "2025-01-03T12:00:00+00:00"


def test_html_is_self_contained_and_complete(board, tmp_path):
    page = (board / "index.html").read_text()
    assert not re.search(r"https?://|<link\b|<script[^>]*\bsrc=|@import|url\(", page)
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr>") == len(LABELS)
    assert page.count("<svg") == 4  # classification, retrieval, detection, diagnostics
    for family in ("zero-shot classification", "retrieval", "detection", "diagnostics"):
        assert f"<figcaption>{family} <span" in page
    assert page.index("synth-cls") < page.index("synth-retrieval") < page.index("synth-det") < page.index("synth-grounding")
    # Rebuilding from the same records gives the same bytes.
    rebuilt = tmp_path / "again"
    build_leaderboard(tmp_path / "results", rebuilt)
    assert (rebuilt / "index.html").read_bytes() == (board / "index.html").read_bytes()


def test_cli_build_and_bad_input(tmp_path, board):
    result = run_cli("leaderboard", "build", tmp_path / "results", "--out", tmp_path / "cli")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["index.html", "leaderboard.csv", "leaderboard.md"]
    assert_one_line_error(run_cli("leaderboard", "build", tmp_path / "none", "--out", tmp_path / "x"), "none", "does not exist")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]

# Injected first in <head>: every uncaught error, failed resource load and console.error is collected;
# after load, the probe counts visible rows, clicks headers, and writes what it saw into the DOM,
# which --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href))));
}, true);
window.addEventListener("unhandledrejection", function (e) { window.__errors.push("rejection: " + e.reason); });
var consoleError = console.error;
console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
window.addEventListener("load", function () {
  var table = document.getElementById("leaderboard");
  function order() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[0].getAttribute("data-value"); });
  }
  function header(text) {
    return Array.prototype.filter.call(table.querySelectorAll("thead th[data-col]"), function (th) {
      return th.textContent.trim() === text; })[0];
  }
  var report = {visible: Array.prototype.filter.call(table.tBodies[0].rows, function (r) {
    return r.getBoundingClientRect().height > 0; }).length};
  header("top1 \\u2191").querySelector("button").click();
  report.top1 = order();
  header("top1 \\u2191").querySelector("button").click();
  report.top1_again = order();
  header("position_r2 \\u2193").querySelector("button").click();
  report.position_r2 = order();
  header("checkpoint").querySelector("button").click();
  report.checkpoint = order();
  report.errors = window.__errors;
  var out = document.createElement("pre");
  out.id = "probe-report";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sparc-chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
        )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)")
def test_page_in_headless_chromium(board, tmp_path):
    page = (board / "index.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE, 1))
    run = _chromium("--dump-dom", probed.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    match = re.search(r'<pre id="probe-report">(.*?)</pre>', run.stdout, re.S)
    assert match, run.stdout[-2000:]
    report = json.loads(html.unescape(match.group(1)))
    assert report["errors"] == []
    assert not [line for line in run.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert report["visible"] == len(LABELS)
    clip, sparc, openclip = LABELS["tiny-clip"], LABELS["tiny-sparc"], LABELS["openclip:ViT-B-16"]
    assert report["top1"] == [openclip, sparc, clip]  # higher is better: best first
    assert report["top1_again"] == [clip, sparc, openclip]
    assert report["position_r2"] == [sparc, clip, openclip]  # lower is better: best first, not-run last
    assert report["checkpoint"] == sorted(LABELS.values(), key=str.lower)

    shot = tmp_path / "leaderboard.png"
    run = _chromium("--window-size=1280,1400", f"--screenshot={shot}", (board / "index.html").as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280

"""`sparc-eval table`: the pivot of hand-made result records, its layouts and its four formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from record_factory import fake_sha, write_run
from rich.console import Console

from sparc_eval.errors import SparcEvalError
from sparc_eval.results.table import build_table, render_csv, render_json, render_markdown, render_rich
from sparc_eval.tasks.runner import RUNNERS

# (checkpoint, task, runner, metrics): tiny-clip lacks synth-det; openclip has only synth-cls.
RUNS = [
    ("tiny-clip", "synth-cls", "classification", {"top1": 0.5, "top5": None}),
    ("tiny-clip", "synth-grounding", "grounding", {"pointing_acc": 0.1, "position_r2": 0.02}),
    ("tiny-clip", "synth-seg", "segmentation", {"mIoU": 0.3}),
    ("tiny-clip", "synth-retrieval", "retrieval", {"i2t_r1": 0.25, "t2i_r1": 0.2}),
    ("tiny-sparc", "synth-cls", "classification", {"top1": 0.55, "top5": None}),
    ("tiny-sparc", "synth-grounding", "grounding", {"pointing_acc": 0.2, "position_r2": 0.01}),
    ("tiny-sparc", "synth-seg", "segmentation", {"mIoU": 0.4}),
    ("tiny-sparc", "synth-retrieval", "retrieval", {"i2t_r1": 0.3, "t2i_r1": 0.35}),
    ("tiny-sparc", "synth-det", "detection", {"AP": 0.05}),
    ("tiny-sparc", "synth-kprecision", "captioning", {"kp": 0.6}),
    ("openclip:ViT-B-16", "synth-cls", "classification", {"top1": 0.7, "top5": 0.9}),
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    for ckpt, task, runner, metrics in RUNS:
        write_run(out, ckpt=ckpt, task=task, runner=runner, metrics=metrics)
    # An older record of tiny-clip on synth-seg under a previous card: superseded by the newer one above.
    write_run(
        out,
        ckpt="tiny-clip",
        task="synth-seg",
        runner="segmentation",
        metrics={"mIoU": 0.9},
        card_sha=fake_sha("old synth-seg card"),
        created_at="2024-06-01T00:00:00+00:00",
    )
    return out


def _label(ckpt: str) -> str:
    name = ckpt.split("/")[-1]
    return f"{name} ({fake_sha(ckpt)[:8]})"


def test_pivot_holds_every_record_value_and_marks_undefined_and_not_run(results):
    table = build_table(results)
    cols = {(c.task, c.metric): c for c in table.columns}
    assert len(table.rows) == 3
    for ckpt, task, runner, metrics in RUNS:
        for metric, value in metrics.items():
            assert table.cell(_label(ckpt), cols[(task, metric)]) == value
            assert cols[(task, metric)].higher_is_better is RUNNERS.get(runner).metrics[metric]
    # Not evaluated: an empty cell, distinct from an undefined metric (None).
    assert table.cell(_label("tiny-clip"), cols[("synth-det", "AP")]) == ""
    assert table.cell(_label("tiny-clip"), cols[("synth-cls", "top5")]) is None
    # The newest record wins; the older one is reported, not shown.
    assert table.cell(_label("tiny-clip"), cols[("synth-seg", "mIoU")]) == 0.3
    assert len(table.superseded) == 1


def test_layouts_order_columns(results):
    default = [(c.task, c.metric) for c in build_table(results).columns]
    assert [t for t, _ in default] == sorted(t for t, _ in default)
    assert default[:2] == [("synth-cls", "top1"), ("synth-cls", "top5")]  # the runner's metric order within a task
    paper = [c.task for c in build_table(results, layout="paper").columns]
    tasks = list(dict.fromkeys(paper))
    assert tasks == ["synth-cls", "synth-retrieval", "synth-seg", "synth-det", "synth-kprecision", "synth-grounding"]


def test_markdown_csv_json_agree_with_the_records(results):
    table = build_table(results, layout="paper")
    lines = render_markdown(table).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "checkpoint" and "synth-cls · top1 ↑" in header and "synth-grounding · position_r2 ↓" in header
    md_rows = {
        cells[0]: dict(zip(header, cells)) for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:5])
    }
    assert md_rows[_label("tiny-clip")]["synth-cls · top5 ↑"] == "n/a"
    assert md_rows[_label("tiny-clip")]["synth-det · AP ↑"] == ""
    assert md_rows[_label("tiny-sparc")]["synth-retrieval · t2i_r1 ↑"] == "0.35"
    assert "older record" in lines[-1]

    rows = {r["checkpoint"]: r for r in csv.DictReader(io.StringIO(render_csv(table)))}
    assert rows[_label("openclip:ViT-B-16")]["synth-cls/top5"] == "0.9"
    assert rows[_label("tiny-clip")]["synth-cls/top5"] == ""  # undefined -> blank
    assert rows[_label("tiny-clip")]["sha256"] == fake_sha("tiny-clip")
    assert rows[_label("openclip:ViT-B-16")]["name"] == "openclip:ViT-B-16"

    data = json.loads(render_json(table))
    by_label = {r["checkpoint"]: r for r in data["rows"]}
    assert by_label[_label("tiny-clip")]["values"]["synth-cls"] == {"top1": 0.5, "top5": None}
    assert "synth-det" not in by_label[_label("tiny-clip")]["values"]
    assert {c["family"] for c in data["columns"]} == {
        "zero-shot classification",
        "retrieval",
        "segmentation",
        "detection",
        "captioning",
        "diagnostics",
    }


def test_rich_table_transposes_when_too_wide(results):
    table = build_table(results)
    texts = {}
    for width in (400, 80):
        console = Console(width=width, file=io.StringIO())
        console.print(render_rich(table, width=width))
        texts[width] = console.file.getvalue()
    assert "transposed" not in texts[400] and "transposed" in texts[80]
    assert "tiny-sparc" in texts[80] and "position_r2" in texts[80]


def test_limited_runs_are_separate_rows(tmp_path):
    write_run(tmp_path, ckpt="tiny-clip", task="synth-cls", metrics={"top1": 0.5})
    write_run(tmp_path, ckpt="tiny-clip", task="synth-cls", metrics={"top1": 0.75}, limit=16)
    table = build_table(tmp_path)
    assert list(table.rows) == [_label("tiny-clip"), _label("tiny-clip") + " [limit 16]"]


def test_bad_layout_and_empty_folder(tmp_path, results):
    with pytest.raises(SparcEvalError, match="layout"):
        build_table(results, layout="wide")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SparcEvalError, match="no result records"):
        build_table(empty)


def test_cli_formats(results):
    md = run_cli("table", results, "--format", "md", "--layout", "paper")
    assert md.code == 0, md.stderr
    assert md.stdout.splitlines()[0].startswith("| checkpoint | synth-cls · top1 ↑")
    as_json = run_cli("table", results, "--format", "json")
    assert as_json.code == 0 and len(json.loads(as_json.stdout)["rows"]) == 3
    rich = run_cli("table", results)
    assert rich.code == 0 and "tiny-sparc" in rich.stdout


def test_cli_bad_input_is_one_line(tmp_path, results):
    assert_one_line_error(run_cli("table", tmp_path / "missing"), "does not exist")
    assert_one_line_error(run_cli("table", results, "--format", "xlsx"), "xlsx")
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "t.record.json").write_text("{not json")
    assert_one_line_error(run_cli("table", bad), "t.record.json", "not valid JSON")
    old = json.loads(next(results.rglob("*.record.json")).read_text())
    (bad / "x" / "t.record.json").write_text(json.dumps({**old, "schema_version": 99}))
    assert_one_line_error(run_cli("table", bad), "schema version 99")

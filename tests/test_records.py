"""Result records: a strict, bounded schema; NaN and infinity never enter one and are refused by every reader of
records (table, regress plain and --exact, leaderboard); a run whose optional library is missing stops first."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from record_factory import write_run

from sparc_eval.errors import SparcEvalError
from sparc_eval.evaluation import run_evaluation
from sparc_eval.results import record as record_module
from sparc_eval.results.record import load_record, load_samples
from sparc_eval.tasks.runner import RUNNERS, Runner, TaskOutput


def _good(out: Path, value: float = 0.5, **kw) -> Path:
    return write_run(out, ckpt="tiny-clip", task="synth-cls", metrics={"top1": value, "top5": None}, **kw)


def test_a_record_reads_back_as_written(tmp_path):
    path = _good(tmp_path / "r", params={"templates": "simple", "classnames": None})
    record = load_record(path)
    assert record.metric_values() == {"top1": 0.5, "top5": None}
    assert record.task["params"] == {"templates": "simple", "classnames": None}
    assert json.loads(path.read_text()) == record.to_json()
    assert len(load_samples(path, record)) == 4


def _mutate(path: Path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


BAD_RECORDS = [
    (lambda r: r.update(metrics=[1, 2]), "key 'metrics' has value [1, 2]"),
    (lambda r: r["metrics"]["top1"].update(value="0.5"), "key 'metrics.top1.value' has value '0.5'"),
    (lambda r: r["metrics"]["top1"].update(value=True), "key 'metrics.top1.value' has value True"),
    (lambda r: r["metrics"]["top1"].pop("higher_is_better"), "missing key 'metrics.top1.higher_is_better'"),
    (lambda r: r.update(n_samples=-1), "key 'n_samples' has value -1"),
    (lambda r: r.update(seed=True), "key 'seed' has value True"),
    (lambda r: r.update(samples_file="../../../etc/passwd"), "key 'samples_file'"),
    (lambda r: r.update(samples_file="/etc/passwd"), "key 'samples_file'"),
    (lambda r: r.update(samples_sha256="abc"), "key 'samples_sha256'"),
    (lambda r: r["task"].pop("params"), "missing key 'task.params'"),
    (lambda r: r["task"].update(name="../x"), "key 'task.name'"),
    (lambda r: r["checkpoint"].update(sha256=None), "key 'checkpoint.sha256' has value None"),
    (lambda r: r.update(surprise=1), "unknown key 'surprise'"),
    (lambda r: r.update(wall_time_s=float("inf")), "key 'wall_time_s' has value inf"),
    (lambda r: r.update(schema_version=1), "schema version 1; this sparc-eval reads version 2 only: re-run the evaluation"),
    (lambda r: r.pop("schema_version"), "schema version None"),
]


@pytest.mark.parametrize(("change", "needle"), BAD_RECORDS, ids=[n for _, n in BAD_RECORDS])
def test_bad_records_are_one_line_naming_the_record_and_key(tmp_path, change, needle):
    path = _good(tmp_path / "r")
    _mutate(path, change)
    with pytest.raises(SparcEvalError) as info:
        load_record(path)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message, message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_metric_is_named(tmp_path, value):
    path = _good(tmp_path / "r", value=value)  # json.dumps writes NaN / Infinity literals
    with pytest.raises(SparcEvalError, match=f"metric 'top1' is {value}; a record holds a finite number or null"):
        load_record(path)


def test_records_are_read_within_bounds(tmp_path, monkeypatch):
    path = _good(tmp_path / "r")
    monkeypatch.setattr(record_module, "RECORD_MAX_BYTES", 100)
    with pytest.raises(SparcEvalError, match="larger than the 0 MiB a result record may take"):
        load_record(path)
    monkeypatch.undo()
    path.write_bytes(path.read_bytes().replace(b'"synth-cls"', b'"synth-cl\xe9"'))
    with pytest.raises(SparcEvalError, match="is not UTF-8 text"):
        load_record(path)
    path.write_text("[" * 100_000)
    with pytest.raises(SparcEvalError, match="nests too deeply"):
        load_record(path)


def test_an_edited_samples_file_is_refused_by_its_readers(tmp_path):
    path = _good(tmp_path / "r")
    record = load_record(path)
    samples = path.parent / record.samples_file
    samples.write_text(samples.read_text().replace('"id":0', '"id":9'))
    assert '"id":9' in samples.read_text()
    with pytest.raises(SparcEvalError, match="has changed since record .* was written"):
        load_samples(path, record)


# ------------------------------------------------------------------------- NaN through every reader of records


@pytest.fixture
def nan_folders(tmp_path):
    good, nan = tmp_path / "good", tmp_path / "nan"
    _good(good)
    return good, nan, _good(nan, value=float("nan"))


@pytest.mark.parametrize(
    "command",
    [
        ("regress", "--baseline", "{good}", "--results", "{nan}"),
        ("regress", "--exact", "--baseline", "{good}", "--results", "{nan}"),
        ("regress", "--baseline", "{nan}", "--results", "{good}"),
        ("table", "{nan}"),
        ("leaderboard", "build", "{nan}", "--out", "{out}"),
    ],
    ids=["regress-new", "regress-exact", "regress-baseline", "table", "leaderboard"],
)
def test_table_regress_and_leaderboard_refuse_a_nan_record(nan_folders, tmp_path, command):
    good, nan, nan_record = nan_folders
    args = [a.format(good=good, nan=nan, out=tmp_path / "board") for a in command]
    assert_one_line_error(run_cli(*args), str(nan_record), "metric 'top1' is nan")
    assert not (tmp_path / "board").exists()


# ------------------------------------------------------------------------------- what enters a record


@dataclass
class NoParams:
    pass


class FixedRunner(Runner):
    """Reports whatever `value` the test sets, without reading data."""

    Params = NoParams
    metrics = {"score": True}
    value: object = 0.0

    def evaluate(self, model):
        return TaskOutput(metrics={"score": type(self).value}, samples=[{"id": 0}], n_samples=1)


@pytest.fixture
def fixed_card(tmp_path):
    card = tmp_path / "fixed-probe.yaml"
    card.write_text("name: fixed-probe\nversion: 1\nrunner: test-fixed\ndataset: {format: pairs, root: '{data}', split: val}\n")
    with RUNNERS.registered("test-fixed", FixedRunner):
        yield card


@pytest.mark.parametrize(
    "value, needle", [(math.nan, "came out as nan"), (-math.inf, "came out as -inf"), ("high", "is 'high', not a number")]
)
def test_a_runner_producing_nan_is_an_error_naming_task_and_metric(
    fixed_card, tiny_sparc_ckpt, tmp_path, monkeypatch, value, needle
):
    monkeypatch.setattr(FixedRunner, "value", value)
    out = tmp_path / "out"
    with pytest.raises(SparcEvalError, match=f"task fixed-probe \\(runner 'test-fixed'\\): metric 'score' {needle}"):
        run_evaluation(str(tiny_sparc_ckpt), str(fixed_card), out=out, data_dir=tmp_path, num_workers=0)
    assert not list(out.rglob("*.record.json"))
    monkeypatch.setattr(FixedRunner, "value", None)  # None is the explicit 'undefined'
    evaluation = run_evaluation(str(tiny_sparc_ckpt), str(fixed_card), out=out, data_dir=tmp_path, num_workers=0)
    assert load_record(evaluation.path).metric_values() == {"score": None}


# --------------------------------------------------------------------------------------- optional libraries


def test_a_missing_optional_library_stops_before_any_work(tmp_path, monkeypatch):
    missing_ckpt = tmp_path / "not-a-checkpoint"
    monkeypatch.setitem(sys.modules, "lvis", None)  # `import lvis` now fails, as if it were not installed
    with pytest.raises(
        SparcEvalError, match="task lvis-det: .* needs the optional library 'lvis'.*pip install 'sparc-eval\\[lvis\\]'"
    ):
        run_evaluation(str(missing_ckpt), "lvis-det", out=tmp_path / "out", data_dir=tmp_path)
    # The detection runner needs it for the LVIS protocol whatever the data format.
    card = tmp_path / "det.yaml"
    card.write_text(
        "name: det\nversion: 1\nrunner: detection\nparams: {protocol: lvis}\n"
        "dataset: {format: coco-instances, root: x, split: val, annotation: a.json}\n"
        "fit_dataset: {format: coco-instances, root: x, split: train, annotation: a.json}\n"
    )
    with pytest.raises(SparcEvalError, match="runner 'detection' needs the optional library 'lvis'"):
        run_evaluation(str(missing_ckpt), str(card), out=tmp_path / "out", data_dir=tmp_path)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()  # with the library, the same call gets as far as the checkpoint
    with pytest.raises(SparcEvalError, match=str(missing_ckpt)):
        run_evaluation(str(missing_ckpt), str(card), out=tmp_path / "out", data_dir=tmp_path)


def test_a_reader_declares_its_optional_library(tmp_path, monkeypatch):
    from sparc_eval.data.registry import READERS

    def read_needy(root, split, *, transform=None):
        raise AssertionError("never reached: the requirement is checked first")

    read_needy.requires = {"no_such_library_for_sparc_tests": "needy"}
    card = tmp_path / "needy.yaml"
    card.write_text("name: needy\nversion: 1\nrunner: retrieval\ndataset: {format: needy-format, root: x, split: val}\n")
    with READERS.registered("needy-format", read_needy):
        with pytest.raises(SparcEvalError, match="reader 'needy-format' needs .* pip install 'sparc-eval\\[needy\\]'"):
            run_evaluation(str(tmp_path / "no-ckpt"), str(card), out=tmp_path / "out", data_dir=tmp_path)


def test_a_model_source_declares_its_optional_library(tmp_path):
    from sparc_eval.models.loaders import LOADERS

    def load_needy(spec, *, trust_pickle):
        raise AssertionError("never reached: the requirement is checked first")

    load_needy.requires = {"no_such_library_for_sparc_tests": "needy"}
    with LOADERS.registered("needy", load_needy):
        with pytest.raises(SparcEvalError, match="model source 'needy' needs .* pip install 'sparc-eval\\[needy\\]'"):
            run_evaluation("needy:anything", "synth-cls", out=tmp_path / "out", data_dir=tmp_path)


def test_the_missing_library_is_one_line_and_exit_2_on_the_command_line(tmp_path):
    code = (
        "import sys; sys.modules['lvis'] = None\n"
        "from sparc_eval.cli.main import main\n"
        f"main(['run', '--task', 'lvis-det', '--ckpt', {str(tmp_path / 'none')!r}, '--out', {str(tmp_path / 'out')!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install 'sparc-eval[lvis]'" in lines[0] and "lvis-det" in lines[0]

"""`sparc-eval regress`: the gate on hand-made records, its paired tests against hand-worked values, and bad input."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from record_factory import fake_sha, write_run

from sparc_eval.errors import SparcEvalError
from sparc_eval.results import regress
from sparc_eval.results.regress import compare_results
from sparc_eval.tasks import runner as runner_module
from sparc_eval.tasks.card import load_card
from sparc_eval.tasks.runner import Runner

N = 200


def _hits(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(N) < 0.8).astype(int)


def _write_cls(out: Path, hits: np.ndarray, ckpt: str = "tiny-clip", **kw) -> Path:
    samples = [{"id": f"val/{i}.png", "top1": int(h), "label": i % 6} for i, h in enumerate(hits)]
    return write_run(
        out,
        ckpt=ckpt,
        task="synth-cls",
        metrics={"top1": float(hits.mean()), "top5": None},
        samples=samples,
        **kw,
    )


def _flip(hits: np.ndarray, lose: int, gain: int) -> np.ndarray:
    out = hits.copy()
    out[np.flatnonzero(hits == 1)[:lose]] = 0
    out[np.flatnonzero(hits == 0)[:gain]] = 1
    return out


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    out = tmp_path / "baseline"
    _write_cls(out, _hits())
    write_run(out, ckpt="tiny-clip", task="synth-seg", runner="segmentation", metrics={"mIoU": 0.3})
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_identical_results_pass(baseline, tmp_path):
    result = run_cli("regress", "--baseline", baseline, "--results", _copy(baseline, tmp_path / "new"))
    assert result.code == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "McNemar" in result.stdout  # the rule is stated in the header


def test_degraded_per_sample_file_fails(baseline, tmp_path):
    new = tmp_path / "new"
    _write_cls(new, _flip(_hits(), lose=30, gain=2))
    write_run(new, ckpt="tiny-clip", task="synth-seg", runner="segmentation", metrics={"mIoU": 0.3})
    result = run_cli("regress", "--baseline", baseline, "--results", new, "--json")
    assert result.code == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    (top1,) = [m for m in report["metrics"] if m["metric"] == "top1"]
    assert top1["status"] == "REGRESSION" and top1["test"] == "McNemar" and top1["p_value"] < 1e-5
    assert report["problems"] == [] and report["passed"] is False


def test_small_drop_is_within_noise_and_tolerance_is_not_tested(baseline, tmp_path):
    _write_cls(tmp_path / "noise", _flip(_hits(), lose=3, gain=1))
    report = compare_results(baseline, tmp_path / "noise")
    (top1,) = [m for m in report.metrics if m.metric == "top1"]
    assert top1.status == regress.WITHIN_NOISE and top1.test == "McNemar" and top1.p_value > 0.05
    # synth-seg is missing from this folder: reported, and it fails the gate on its own.
    assert [(p.task, p.kind) for p in report.problems] == [("synth-seg", "missing")] and report.exit_code == 1

    _write_cls(tmp_path / "big", _flip(_hits(), lose=30, gain=0))
    write_run(tmp_path / "big", ckpt="tiny-clip", task="synth-seg", runner="segmentation", metrics={"mIoU": 0.3})
    lenient = compare_results(baseline, tmp_path / "big", tolerance=0.2)
    (top1,) = [m for m in lenient.metrics if m.metric == "top1"]
    assert top1.status == regress.PASS and top1.test == "-" and lenient.exit_code == 0
    assert compare_results(baseline, tmp_path / "big", tolerance=0.1).exit_code == 1


def test_exact_mode_fails_a_drop_no_paired_test_could_detect(baseline, tmp_path):
    # One sample lost (and none gained): McNemar's p is 1, so the statistical gate passes it as noise ...
    _write_cls(tmp_path / "one", _flip(_hits(), lose=1, gain=0))
    write_run(tmp_path / "one", ckpt="tiny-clip", task="synth-seg", runner="segmentation", metrics={"mIoU": 0.3})
    (top1,) = [m for m in compare_results(baseline, tmp_path / "one").metrics if m.metric == "top1"]
    assert top1.status == regress.WITHIN_NOISE
    # ... a replica of a deterministic run has no noise: exact mode fails it, and identical results still pass.
    result = run_cli("regress", "--exact", "--baseline", baseline, "--results", tmp_path / "one", "--json")
    assert result.code == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    (top1,) = [m for m in report["metrics"] if m["metric"] == "top1"]
    assert top1["status"] == "REGRESSION" and top1["test"] == "exact" and top1["p_value"] is None
    assert report["exact"] is True and report["rule"].startswith("Exact mode")
    assert run_cli("regress", "--exact", "--baseline", baseline, "--results", _copy(baseline, tmp_path / "same")).code == 0
    assert compare_results(baseline, tmp_path / "one", exact=True, tolerance=0.5).exit_code == 0


def test_exact_mode_allows_float_round_off_only(baseline, tmp_path):
    # Another CPU or thread count reorders float sums: grounding means moved in the 9th digit (1 vs 2 threads).
    for name, miou in (("roundoff", 0.3 - 1e-9), ("real", 0.3 - 1e-4)):
        _write_cls(tmp_path / name, _hits())
        write_run(tmp_path / name, ckpt="tiny-clip", task="synth-seg", runner="segmentation", metrics={"mIoU": miou})
    assert compare_results(baseline, tmp_path / "roundoff", exact=True).exit_code == 0
    (miou,) = [m for m in compare_results(baseline, tmp_path / "real", exact=True).metrics if m.metric == "mIoU"]
    assert miou.status == regress.REGRESSION and miou.test == "exact"


@pytest.mark.parametrize("lost, gained", [(7, 1), (12, 3), (5, 5), (1, 0), (20, 9)])
def test_mcnemar_matches_the_exact_binomial_by_hand(lost, gained):
    base = np.array([1] * lost + [0] * gained + [1, 0] * 5, dtype=bool)
    new = np.array([0] * lost + [1] * gained + [1, 0] * 5, dtype=bool)
    n, k = lost + gained, min(lost, gained)
    by_hand = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert regress._mcnemar(base, new) == pytest.approx(by_hand, rel=1e-12)


def test_changed_card_limit_and_sample_set_are_reported(baseline, tmp_path):
    new = tmp_path / "new"
    _write_cls(new, _hits(), version=2)  # same content, bumped card version
    write_run(
        new,
        ckpt="tiny-clip",
        task="synth-seg",
        runner="segmentation",
        metrics={"mIoU": 0.3},
        card_sha=fake_sha("edited synth-seg card"),
    )
    write_run(new, ckpt="tiny-sparc", task="synth-seg", runner="segmentation", metrics={"mIoU": 0.9})
    report = compare_results(baseline, new)
    details = {p.task: (p.kind, p.detail) for p in report.problems}
    assert details["synth-cls"][0] == "changed" and "version" in details["synth-cls"][1]
    assert details["synth-seg"][0] == "changed" and "sha256" in details["synth-seg"][1]
    assert report.not_in_baseline == ["tiny-sparc / synth-seg"] and report.exit_code == 1

    limited = tmp_path / "limited"
    _write_cls(limited, _hits()[:50], limit=50)
    assert "sample limit" in compare_results(baseline, limited).problems[0].detail

    other_ids = tmp_path / "other-ids"
    hits = _hits()
    rows = [{"id": f"val/{i}.png" if i else "val/elsewhere.png", "top1": int(h), "label": i % 6} for i, h in enumerate(hits)]
    write_run(other_ids, ckpt="tiny-clip", task="synth-cls", metrics={"top1": float(hits.mean())}, samples=rows)
    problems = compare_results(baseline, other_ids).problems
    assert problems[0].task == "synth-cls" and "sample set changed" in problems[0].detail


def test_cli_reports_missing_task(baseline, tmp_path):
    new = tmp_path / "new"
    _write_cls(new, _hits())
    result = run_cli("regress", "--baseline", baseline, "--results", new)
    assert result.code == 1 and "missing" in result.stdout and "synth-seg" in result.stdout and "FAIL" in result.stdout


def test_bad_input_exits_2_with_one_line(baseline, tmp_path):
    assert_one_line_error(run_cli("regress", "--baseline", tmp_path / "nope", "--results", baseline), "nope", "does not exist")
    broken = _copy(baseline, tmp_path / "broken")
    record = next(broken.rglob("synth-cls-*.record.json"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "schema_version": 0}))
    assert_one_line_error(run_cli("regress", "--baseline", baseline, "--results", broken), record.name, "schema version 0")


def test_bad_input_errors_name_the_file_or_value(baseline, tmp_path):
    broken = _copy(baseline, tmp_path / "broken")
    record = next(broken.rglob("synth-cls-*.record.json"))
    record.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SparcEvalError, match="schema version"):
        compare_results(baseline, broken)
    record.write_text("{")
    with pytest.raises(SparcEvalError, match="not valid JSON"):
        compare_results(baseline, broken)
    no_samples = _copy(baseline, tmp_path / "no-samples")
    next(no_samples.rglob("synth-cls-*.samples.jsonl")).unlink()
    with pytest.raises(SparcEvalError, match="per-sample file .* does not exist"):
        compare_results(baseline, no_samples)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparcEvalError, match="no result records"):
        compare_results(baseline, tmp_path / "empty")
    for option, value in (("alpha", 1.5), ("tolerance", -1), ("n_bootstrap", 0)):
        with pytest.raises(SparcEvalError, match=option.replace("n_", "")):
            compare_results(baseline, baseline, **{option: value})


# ---------------------------------------------------------------------------------------- paired bootstrap


@dataclass
class MeanParams:
    field: str = "score"


class MeanRunner(Runner):
    """A runner whose only metric is the mean of one per-sample field (not 0/1, so the bootstrap is used)."""

    Params = MeanParams
    metrics = {"mean_score": True}

    def evaluate(self, model):  # the gate never evaluates
        raise AssertionError

    @classmethod
    def aggregate(cls, samples, params):
        return {"mean_score": float(np.mean([s[params.field] for s in samples]))}


class NoAggregateRunner(Runner):
    Params = MeanParams
    metrics = {"mean_score": True}

    def evaluate(self, model):
        raise AssertionError


@pytest.fixture
def mean_card(tmp_path) -> Iterator[Path]:
    card = tmp_path / "cards" / "synth-mean.yaml"
    card.parent.mkdir()
    card.write_text(
        "name: synth-mean\nversion: 1\nrunner: test-mean\ndataset: {format: pairs, root: x, split: val}\nparams: {field: score}\n"
    )
    with (
        runner_module.RUNNERS.registered("test-mean", MeanRunner),
        runner_module.RUNNERS.registered("test-no-aggregate", NoAggregateRunner),
    ):
        yield card


def _write_mean(out: Path, scores, card: Path, runner: str = "test-mean", value: float | None = None) -> Path:
    loaded = load_card(card)
    samples = [{"id": i, "score": float(s)} for i, s in enumerate(scores)]
    return write_run(
        out,
        ckpt="tiny-sparc",
        task="synth-mean",
        runner=runner,
        samples=samples,
        metrics={"mean_score": float(np.mean(scores)) if value is None else value},
        card_sha=loaded.sha256,
        card_path=str(card),
        params={"field": "score"},
    )


def test_bootstrap_p_values_match_hand_worked_cases(mean_card, tmp_path):
    scores = np.random.default_rng(1).random(50)
    _write_mean(tmp_path / "base", scores, mean_card)
    # Every sample worse: every resample's delta is negative, so p = 2 / (B + 1) exactly.
    _write_mean(tmp_path / "all-worse", scores - 0.1, mean_card)
    report = compare_results(tmp_path / "base", tmp_path / "all-worse", n_bootstrap=400)
    (m,) = report.metrics
    assert m.test == "bootstrap" and m.status == regress.REGRESSION
    assert m.p_value == pytest.approx(2 / 401)
    # One sample worse: a resample shows no drop exactly when it misses that sample, with probability (1 - 1/n)^n.
    one = scores.copy()
    one[7] -= 0.5
    _write_mean(tmp_path / "one-worse", one, mean_card)
    (m,) = compare_results(tmp_path / "base", tmp_path / "one-worse", n_bootstrap=2000).metrics
    assert m.status == regress.WITHIN_NOISE
    assert m.p_value == pytest.approx(2 * (1 - 1 / 50) ** 50, abs=0.05)


def test_bootstrap_is_seeded_and_checks_the_aggregate(mean_card, tmp_path):
    scores = np.random.default_rng(2).random(40)
    _write_mean(tmp_path / "base", scores, mean_card)
    shifted = scores - np.random.default_rng(3).normal(0.02, 0.1, size=40)
    _write_mean(tmp_path / "new", shifted, mean_card)
    a = compare_results(tmp_path / "base", tmp_path / "new", n_bootstrap=300, seed=5).metrics[0].p_value
    b = compare_results(tmp_path / "base", tmp_path / "new", n_bootstrap=300, seed=5).metrics[0].p_value
    assert a == b is not None
    _write_mean(tmp_path / "lying", scores - 0.1, mean_card, value=float(np.mean(scores)) - 0.2)
    report = compare_results(tmp_path / "base", tmp_path / "lying", n_bootstrap=50)
    assert any("aggregate gives" in note for note in report.notes)


def test_no_paired_test_means_a_drop_beyond_tolerance_fails(mean_card, tmp_path):
    scores = np.linspace(0, 1, 30)
    _write_mean(tmp_path / "base", scores, mean_card, runner="test-no-aggregate")
    _write_mean(tmp_path / "new", scores - 0.01, mean_card, runner="test-no-aggregate")
    (m,) = compare_results(tmp_path / "base", tmp_path / "new").metrics
    assert m.test == "none" and m.status == regress.REGRESSION and "cannot recompute" in m.note


def test_the_gate_reads_params_from_the_records_never_the_card(mean_card, tmp_path):
    scores = np.linspace(0, 1, 30)
    _write_mean(tmp_path / "base", scores, mean_card)
    _write_mean(tmp_path / "new", scores - 0.1, mean_card)
    mean_card.unlink()  # records are self-contained: the bootstrap re-scores with the params they hold
    (m,) = compare_results(tmp_path / "base", tmp_path / "new", n_bootstrap=50).metrics
    assert m.test == "bootstrap" and m.status == regress.REGRESSION
    # Params that the runner does not take are one line naming the record.
    record = next((tmp_path / "new").rglob("*.record.json"))
    raw = json.loads(record.read_text())
    raw["task"]["params"] = {"feld": "score"}
    record.write_text(json.dumps(raw))
    with pytest.raises(SparcEvalError, match=f"result record {record}: unknown params key 'feld'"):
        compare_results(tmp_path / "base", tmp_path / "new", n_bootstrap=50)


def test_baseline_samples_without_the_runners_fields_are_one_line(mean_card, tmp_path):
    # A baseline whose per-sample file (sha256 matching its record) lacks the field the runner's aggregate reads.
    scores = np.linspace(0, 1, 30)
    path = _write_mean(tmp_path / "base", scores, mean_card)
    record = json.loads(path.read_text())
    samples = path.parent / record["samples_file"]
    samples.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(30)))
    record["samples_sha256"] = hashlib.sha256(samples.read_bytes()).hexdigest()
    path.write_text(json.dumps(record))
    _write_mean(tmp_path / "new", scores - 0.1, mean_card)
    with pytest.raises(SparcEvalError) as info:  # in process: the test runner is registered here only
        compare_results(tmp_path / "base", tmp_path / "new", n_bootstrap=20)
    assert str(info.value).startswith(f"per-sample records of {path} do not hold what runner 'test-mean'")
    assert "KeyError: 'score'" in str(info.value) and "\n" not in str(info.value)

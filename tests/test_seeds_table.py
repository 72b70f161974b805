"""Results over training seeds: checkpoints that share a recipe make one row (mean, standard deviation, n seeds),
--per-seed keeps one row per checkpoint, and the paired test between two recipes over the same test images.
Expected values are computed here with the statistics module and scipy, never with the code under test."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from record_factory import fake_sha, write_run
from scipy.stats import binomtest

from sparc_eval.errors import SparcEvalError
from sparc_eval.results.collect import collect
from sparc_eval.results.leaderboard import build_leaderboard
from sparc_eval.results.seeds import find_group, group_entries, paired_test
from sparc_eval.results.table import build_table, render_csv, render_markdown, table_json

RECIPE = {"arch": "tiny", "objective": {"name": "clip"}, "steps": 200, "batch_size": 128, "lr": 0.0005, "data_sha256": "d" * 64}


def _write(
    results: Path, name: str, seed: int, recipe: dict | None, task: str, metrics: dict, samples=None, runner="classification"
):
    """A record of checkpoint `name` trained with `recipe` and `seed` (recipe None: a checkpoint trained elsewhere)."""
    sha = fake_sha(f"{name}/{seed}/{json.dumps(recipe, sort_keys=True)}")
    path = write_run(results, ckpt=f"{name}-{seed}", task=task, metrics=metrics, samples=samples, runner=runner, ckpt_sha=sha)
    raw = json.loads(path.read_text())
    raw["checkpoint"]["name"] = name
    if recipe is not None:
        raw["checkpoint"]["training"] = {"seed": seed, "recipe": recipe}
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    for seed, top1 in zip((0, 1, 2), (0.10, 0.20, 0.40)):
        _write(folder, "tiny-clip", seed, RECIPE, "synth-cls", {"top1": top1, "top5": None if seed == 2 else 0.5 + seed / 10})
    sparc = {**RECIPE, "objective": {"name": "sparc", "lambda_f": 5.0}}
    for seed, top1 in zip((0, 1), (0.30, 0.34)):
        _write(folder, "tiny-sparc", seed, sparc, "synth-cls", {"top1": top1, "top5": 0.7})
    _write(folder, "ViT-B-16", 0, None, "synth-cls", {"top1": 0.9, "top5": 1.0})
    return folder


def test_rows_over_seeds_mean_spread_and_n(results):
    table = build_table(results)
    labels = list(table.rows)
    assert "tiny-clip (3 seeds)" in labels and "tiny-sparc (2 seeds)" in labels
    assert any(label.startswith("ViT-B-16 (") for label in labels)  # no recipe: its own row, name and short sha
    col = {c.metric: c for c in table.columns}
    assert table.cell("tiny-clip (3 seeds)", col["top1"]) == pytest.approx(statistics.mean([0.1, 0.2, 0.4]))
    assert table.spread_of("tiny-clip (3 seeds)", col["top1"]) == pytest.approx(statistics.stdev([0.1, 0.2, 0.4]))
    assert table.n_of("tiny-clip (3 seeds)", col["top1"]) == 3
    # top5 is undefined for seed 2: the mean of the two defined values, and n says so
    assert table.cell("tiny-clip (3 seeds)", col["top5"]) == pytest.approx(0.55)
    assert table.n_of("tiny-clip (3 seeds)", col["top5"]) == 2
    md = render_markdown(table)
    assert "| tiny-clip (3 seeds) | 0.2333 ± 0.15 | 0.55 ± 0.071 (n=2) |" in md
    assert "| tiny-sparc (2 seeds) | 0.32 ± 0.028 | 0.7 ± 0 |" in md


def test_per_seed_keeps_one_row_per_checkpoint(results):
    table = build_table(results, per_seed=True)
    assert len(table.rows) == 6 and not table.aggregated
    col = next(c for c in table.columns if c.metric == "top1")
    assert sorted(table.cell(label, col) for label in table.rows) == pytest.approx([0.1, 0.2, 0.3, 0.34, 0.4, 0.9])


def test_how_a_run_was_executed_is_not_the_recipe(tmp_path):
    """DataLoader workers (and world size) do not change what is trained: a record whose recipe lists them, as the
    trainer once wrote, groups with one that does not."""
    folder = tmp_path / "results"
    _write(folder, "tiny-clip", 0, RECIPE, "synth-cls", {"top1": 0.1})
    _write(folder, "tiny-clip", 1, {**RECIPE, "num_workers": 2, "world_size": 2}, "synth-cls", {"top1": 0.3})
    assert list(build_table(folder).rows) == ["tiny-clip (2 seeds)"]


def test_same_name_other_recipe_is_another_row(tmp_path):
    folder = tmp_path / "results"
    for seed in (0, 1):
        _write(folder, "tiny-sparc", seed, RECIPE, "synth-cls", {"top1": 0.1 + seed})
        _write(folder, "tiny-sparc", seed, {**RECIPE, "lr": 0.001}, "synth-cls", {"top1": 0.5 + seed})
    labels = list(build_table(folder).rows)
    assert len(labels) == 2 and all(label.startswith("tiny-sparc [recipe ") and label.endswith("(2 seeds)") for label in labels)


def test_csv_and_json_carry_spread_n_and_seeds(results):
    table = build_table(results)
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    clip = next(r for r in rows if r["checkpoint"] == "tiny-clip (3 seeds)")
    assert float(clip["synth-cls/top1"]) == pytest.approx(statistics.mean([0.1, 0.2, 0.4]))
    assert float(clip["synth-cls/top1 sd"]) == pytest.approx(statistics.stdev([0.1, 0.2, 0.4]))
    assert clip["synth-cls/top5 n"] == "2" and clip["seeds"] == "0 1 2" and clip["sha256"] == ""
    vit = next(r for r in rows if r["checkpoint"].startswith("ViT-B-16"))
    assert vit["synth-cls/top1 sd"] == "" and vit["sha256"] == fake_sha("ViT-B-16/0/null")
    data = table_json(table)
    row = next(r for r in data["rows"] if r["checkpoint"] == "tiny-clip (3 seeds)")
    assert row["n"]["synth-cls"]["top5"] == 2
    assert sorted(m["seed"] for m in row["checkpoints"]) == [0, 1, 2]


def test_leaderboard_rows_over_seeds(results, tmp_path):
    paths = build_leaderboard(results, tmp_path / "lb")
    md = paths["leaderboard.md"].read_text()
    assert "mean ± standard deviation over the recipe's training seeds" in md
    assert "tiny-clip (3 seeds) | 0.2333 ± 0.15" in md
    assert "(seed 2)" in md  # provenance lists every checkpoint with its seed
    page = paths["index.html"].read_text()
    assert "3 seeds</span>" in page and "0.2333 ± 0.15" in page
    per_seed = build_leaderboard(results, tmp_path / "lb2", per_seed=True)["leaderboard.md"].read_text()
    assert "(3 seeds)" not in per_seed and "± " not in per_seed


# ----------------------------------------------------------------------------- paired test


def _outcomes(bits: list[int]) -> list[dict]:
    return [{"id": i, "top1": b} for i, b in enumerate(bits)]


def test_paired_test_one_seed_each_is_exact_mcnemar(tmp_path):
    folder = tmp_path / "results"
    a = [1] * 10 + [0] * 30 + [1] * 5 + [0] * 5  # 50 images
    b = [1] * 10 + [1] * 12 + [0] * 5 + [0] * 23  # gains 12 where a failed, loses 5 where a was right
    _write(folder, "A", 0, RECIPE, "synth-cls", {"top1": sum(a) / 50}, samples=_outcomes(a))
    _write(folder, "B", 0, {**RECIPE, "lr": 1.0}, "synth-cls", {"top1": sum(b) / 50}, samples=_outcomes(b))
    groups = group_entries(collect(folder)[0])
    (c,) = paired_test(find_group(groups, "A"), find_group(groups, "B"), n_bootstrap=2000)
    assert c.test == "McNemar"
    assert c.p_value == pytest.approx(binomtest(5, 17, 0.5).pvalue)
    assert c.delta == pytest.approx((22 - 15) / 50)
    assert c.ci_low < c.delta < c.ci_high


def test_paired_test_over_seeds_bootstraps_per_image_means(tmp_path):
    folder = tmp_path / "results"
    n = 200
    for seed in (0, 1):
        a = [int((i + seed) % 4 == 0) for i in range(n)]  # 25 % correct
        b = [int((i + seed) % 4 != 0) for i in range(n)]  # 75 % correct
        _write(folder, "A", seed, RECIPE, "synth-cls", {"top1": sum(a) / n}, samples=_outcomes(a))
        _write(folder, "B", seed, {**RECIPE, "lr": 1.0}, "synth-cls", {"top1": sum(b) / n}, samples=_outcomes(b))
        _write(folder, "C", seed, {**RECIPE, "lr": 2.0}, "synth-cls", {"top1": sum(a) / n}, samples=_outcomes(a))
    groups = group_entries(collect(folder)[0])
    (c,) = paired_test(find_group(groups, "A"), find_group(groups, "B"), n_bootstrap=500)
    assert (c.test, c.n_a, c.n_b) == ("bootstrap", 2, 2)
    assert c.delta == pytest.approx(0.5) and c.p_value < 0.01 and c.ci_low > 0.3
    (same,) = paired_test(find_group(groups, "A"), find_group(groups, "C"), n_bootstrap=500)
    assert same.delta == 0 and same.p_value == 1.0


def test_table_cli_per_seed_and_paired(results):
    shown = run_cli("table", results, "--format", "md")
    assert shown.code == 0 and "tiny-clip (3 seeds)" in shown.stdout
    per_seed = run_cli("table", results, "--format", "md", "--per-seed")
    assert per_seed.code == 0 and "(3 seeds)" not in per_seed.stdout
    # Bad --paired input is one line and no table: nothing on stdout, exit 2.
    for args, needle in (
        (("--paired", "tiny-clip", "nothing"), "no row 'nothing' in the results"),
        (("--paired", "tiny-clip", "tiny-clip (3 seeds)"), "--paired needs two different rows"),
        (("--paired", "tiny-clip", "tiny-sparc", "--bootstrap", "0"), "--bootstrap must be between 1 and 1000000, got 0"),
    ):
        bad = run_cli("table", results, *args)
        assert_one_line_error(bad, needle)
        assert bad.stdout == "", (args, bad.stdout)


def test_paired_test_recomputes_other_metrics_with_the_runners_aggregate(tmp_path):
    # mean per-class recall has no per-image outcome: each resample is re-aggregated per seed. Classes 0 and 1,
    # 100 images each. A: class 0 half right, class 1 never (0.25); B: class 0 always, class 1 half (0.75).
    folder = tmp_path / "results"
    n = 200

    def samples(right):
        return [{"id": i, "label": i % 2, "top1": int(right(i)), "top5": 1} for i in range(n)]

    a = samples(lambda i: i % 2 == 0 and i % 4 == 0)
    b = samples(lambda i: i % 2 == 0 or i % 4 == 1)
    for seed in (0, 1):
        _write(folder, "A", seed, RECIPE, "synth-cls", {"top1": 0.125, "mean_per_class_recall": 0.25}, samples=a)
        _write(folder, "B", seed, {**RECIPE, "lr": 1.0}, "synth-cls", {"top1": 0.625, "mean_per_class_recall": 0.75}, samples=b)
    groups = group_entries(collect(folder)[0])
    results = paired_test(find_group(groups, "A"), find_group(groups, "B"), n_bootstrap=300, n_bootstrap_aggregate=100)
    mpcr = next(c for c in results if c.metric == "mean_per_class_recall")
    assert mpcr.test == "bootstrap" and mpcr.delta == pytest.approx(0.5)
    assert mpcr.p_value < 0.05 and 0.35 < mpcr.ci_low < mpcr.ci_high < 0.65


def test_table_cli_paired_finds_a_one_seed_row_by_the_label_it_shows(tmp_path):
    # A recipe trained on one seed keeps its checkpoint's label (name and short sha) in the table; --paired must
    # accept that label, as well as the bare name.
    results = tmp_path / "results"

    def _classified(bits):  # what the classification runner writes per image
        return [{"id": i, "label": i % 2, "top1": b, "top5": 1} for i, b in enumerate(bits)]

    for seed in (0, 1):
        _write(results, "tiny-clip", seed, RECIPE, "synth-cls", {"top1": 0.5, "top5": 1.0}, samples=_classified([0, 1, 1, 0]))
    gloria = {**RECIPE, "objective": {"name": "gloria"}}
    _write(results, "tiny-gloria", 0, gloria, "synth-cls", {"top1": 0.5, "top5": 1.0}, samples=_classified([1, 0, 1, 0]))
    (label,) = [row for row in build_table(results).rows if row.startswith("tiny-gloria")]
    assert "seed" not in label
    for ref in (label, "tiny-gloria"):
        shown = run_cli("table", results, "--format", "md", "--paired", "tiny-clip", ref, "--bootstrap", 50)
        assert shown.code == 0, shown.stderr
        assert f"| task | metric | tiny-clip | {ref} |" in shown.stdout
    # Scored on other test images: one line, and no table before it.
    pacl = {**RECIPE, "objective": {"name": "pacl"}}
    _write(results, "tiny-pacl", 0, pacl, "synth-cls", {"top1": 0.5, "top5": 1.0}, samples=_classified([1, 0] * 3))
    bad = run_cli("table", results, "--paired", "tiny-clip", "tiny-pacl")
    assert_one_line_error(bad, "tiny-clip vs tiny-pacl on synth-cls: sample set changed: 0 of the baseline's 4")
    assert bad.stdout == ""


def test_table_cli_paired_on_samples_without_the_runners_fields_is_one_line(results):
    # The fixture's tiny-clip and tiny-sparc per-sample files hold ids only: nothing the classification aggregate reads.
    bad = run_cli("table", results, "--paired", "tiny-clip", "tiny-sparc", "--bootstrap", 10)
    assert_one_line_error(bad, "do not hold what runner 'classification' recomputes its metrics from (KeyError: 'top1')")
    assert bad.stdout == ""


def test_leaderboard_build_writes_paired_tests_against_one_recipe(tmp_path):
    results, out = tmp_path / "results", tmp_path / "board"
    n = 40

    def classified(right):
        return [{"id": i, "label": i % 2, "top1": int(right(i)), "top5": 1} for i in range(n)]

    for seed in (0, 1):
        clip = classified(lambda i, s=seed: (i + s) % 4 == 0)  # 25 % right on each seed
        sparc = classified(lambda i, s=seed: (i + s) % 4 != 0)  # 75 %
        _write(results, "tiny-clip", seed, RECIPE, "synth-cls", {"top1": 0.25, "top5": 1.0}, samples=clip)
        sparc_recipe = {**RECIPE, "objective": {"name": "sparc"}}
        _write(results, "tiny-sparc", seed, sparc_recipe, "synth-cls", {"top1": 0.75, "top5": 1.0}, samples=sparc)
    shown = run_cli("leaderboard", "build", results, "--out", out, "--paired-against", "tiny-clip", "--bootstrap", 200)
    assert shown.code == 0, shown.stderr
    paired = (out / "paired-tests.md").read_text()
    assert "## tiny-sparc (2 seeds) vs tiny-clip (2 seeds)" in paired
    assert "| task | metric | tiny-clip | tiny-sparc | Δ (tiny-sparc − tiny-clip) |" in paired
    (top1,) = [line for line in paired.splitlines() if line.startswith("| synth-cls | top1 ↑ |")]
    cells = [c.strip() for c in top1.strip("|").split("|")]
    assert cells[2:5] == ["0.25 (n=2)", "0.75 (n=2)", "+0.5"] and cells[6] == "bootstrap" and float(cells[7]) < 0.02
    assert 'href="paired-tests.md"' in (out / "index.html").read_text()
    assert "(paired-tests.md)" in (out / "leaderboard.md").read_text()
    # Per-seed rows on the page; the tests still compare recipes.
    per_seed = run_cli(
        "leaderboard", "build", results, "--out", tmp_path / "per-seed", "--per-seed", "--paired-against", "tiny-clip"
    )
    assert per_seed.code == 0 and "vs tiny-clip (2 seeds)" in (tmp_path / "per-seed" / "paired-tests.md").read_text()
    # Bad input: one line, nothing written.
    for args, needle in (
        (("--paired-against", "nope"), "no row 'nope' in the results"),
        (("--paired-against", "tiny-clip", "--paired-task", "synth-clss"), "paired task 'synth-clss' has no records here"),
        (("--paired-task", "synth-cls"), "--paired-task and --bootstrap-aggregate need --paired-against ROW"),
    ):
        bad = run_cli("leaderboard", "build", results, "--out", tmp_path / "bad", *args)
        assert_one_line_error(bad, needle)
        assert not (tmp_path / "bad").exists()


def test_seeds_scored_with_different_task_cards_do_not_average(tmp_path):
    # Seed 1 was scored after the card changed (other prompts, say): a mean over the two would mix two tasks.
    results = tmp_path / "results"
    _write(results, "tiny-clip", 0, RECIPE, "synth-cls", {"top1": 0.1, "top5": 0.5})
    stale = _write(results, "tiny-clip", 1, RECIPE, "synth-cls", {"top1": 0.2, "top5": 0.6})
    raw = json.loads(stale.read_text())
    raw["task"]["card_sha256"] = "e" * 64
    stale.write_text(json.dumps(raw))
    for command in (("table", results), ("leaderboard", "build", results, "--out", tmp_path / "board")):
        bad = run_cli(*command)
        assert_one_line_error(bad, "tiny-clip (2 seeds) on synth-cls: its seeds were scored with different task cards")
        assert f"card {'e' * 12} for seed 1" in bad.stderr and bad.stdout == ""
    assert not (tmp_path / "board").exists()
    per_seed = run_cli("table", results, "--per-seed", "--format", "csv")
    assert per_seed.code == 0 and per_seed.stdout.count("tiny-clip (") == 2, per_seed.stderr


def test_paired_test_refuses_rows_scored_with_different_task_cards(tmp_path):
    results = tmp_path / "results"
    bits = [1, 0, 1, 0]
    _write(results, "A", 0, RECIPE, "synth-cls", {"top1": 0.5}, samples=_outcomes(bits))
    other = _write(results, "B", 0, {**RECIPE, "lr": 1.0}, "synth-cls", {"top1": 0.5}, samples=_outcomes(bits))
    raw = json.loads(other.read_text())
    raw["task"]["card_sha256"] = "e" * 64
    other.write_text(json.dumps(raw))
    groups = group_entries(collect(results)[0])
    with pytest.raises(SparcEvalError, match="A vs B on synth-cls: scored with different task cards"):
        paired_test(find_group(groups, "A"), find_group(groups, "B"), n_bootstrap=10)


@pytest.mark.parametrize(
    "training,needle",
    [
        ({"seed": "one", "recipe": RECIPE}, "key 'checkpoint.training.seed' has value 'one'"),
        ({"seed": -1, "recipe": RECIPE}, "key 'checkpoint.training.seed' has value -1"),
        ({"seed": 0, "recipe": ["lr", 1]}, "key 'checkpoint.training.recipe'"),
        ({"seed": 0}, "checkpoint.training.recipe"),
    ],
)
def test_a_record_with_a_malformed_training_block_is_one_line(tmp_path, training, needle):
    # The seed grouping sorts and hashes these fields: a hand-edited record was a TypeError traceback.
    results = tmp_path / "results"
    _write(results, "tiny-clip", 0, RECIPE, "synth-cls", {"top1": 0.1, "top5": 0.5})
    bad = _write(results, "tiny-clip", 1, RECIPE, "synth-cls", {"top1": 0.2, "top5": 0.6})
    raw = json.loads(bad.read_text())
    raw["checkpoint"]["training"] = training
    bad.write_text(json.dumps(raw))
    result = run_cli("table", results)
    assert_one_line_error(result, f"result record {bad}", needle)


def test_table_paired_output_stays_machine_readable(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        bits_a = [int((i + seed) % 4 == 0) for i in range(40)]  # 25 % right
        bits_b = [int((i + seed) % 4 != 0) for i in range(40)]  # 75 %
        _write(results, "A", seed, RECIPE, "synth-cls", {"top1": 0.25}, samples=_outcomes(bits_a))
        _write(results, "B", seed, {**RECIPE, "lr": 1.0}, "synth-cls", {"top1": 0.75}, samples=_outcomes(bits_b))
    shown = run_cli("table", results, "--format", "json", "--paired", "A", "B", "--bootstrap", 100)
    assert shown.code == 0, shown.stderr
    document = json.loads(shown.stdout)  # one JSON document, not JSON followed by Markdown
    assert [row["checkpoint"] for row in document["rows"]] == ["A (2 seeds)", "B (2 seeds)"]
    (top1,) = document["paired"]["comparisons"]
    assert (top1["metric"], top1["mean_a"], top1["mean_b"], top1["test"]) == ("top1", 0.25, 0.75, "bootstrap")
    assert top1["delta"] == pytest.approx(0.5) and top1["p_value"] < 0.05
    bad = run_cli("table", results, "--format", "csv", "--paired", "A", "B")
    assert_one_line_error(bad, "--paired adds a second table, which CSV cannot hold")
    assert bad.stdout == ""

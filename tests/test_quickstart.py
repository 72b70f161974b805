"""Checkpoint cards (`card:` references) and `sparc-eval quickstart --fast` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from sparc_eval import checkpoint_cards as checkpoint_card
from sparc_eval.checkpoint_cards import ensure_checkpoint, load_checkpoint_card
from sparc_eval.errors import SparcEvalError
from sparc_eval.results.collect import checkpoint_name

CARD = """name: mini-clip
version: 1
description: test recipe
synthscenes: {seed: 0, n_train: 96, n_val: 32, image_size: 64}
train: {arch: tiny, objective: clip, steps: 2, batch_size: 8, warmup: 1, log_every: 1, seed: 0}
"""


def _card(tmp_path: Path, text: str = CARD, name: str = "mini-clip.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_cards_differ_only_in_the_objective():
    clip, sparc = load_checkpoint_card("tiny-clip"), load_checkpoint_card("tiny-sparc")
    assert (clip.name, sparc.name) == ("tiny-clip", "tiny-sparc")
    assert clip.synthscenes == sparc.synthscenes
    assert clip.train["objective"] == "clip" and sparc.train["objective"] == "sparc"
    differing = {k for k in clip.train.keys() | sparc.train.keys() if clip.train.get(k) != sparc.train.get(k)}
    assert differing <= {"objective", "objective_options"}


@pytest.mark.parametrize("objective", ["clip", "sparc"])
def test_longer_cards_differ_from_the_quickstart_cards_only_in_steps(objective):
    short, long = load_checkpoint_card(f"tiny-{objective}"), load_checkpoint_card(f"tiny-{objective}-1k")
    assert long.synthscenes == short.synthscenes and long.train == {**short.train, "steps": 1000}
    assert long.recipe_sha256 != short.recipe_sha256  # trained into a folder of their own


def test_recipe_hash_follows_the_recipe_not_the_prose(tmp_path):
    base = load_checkpoint_card(_card(tmp_path))
    reworded = load_checkpoint_card(
        _card(tmp_path, CARD.replace("test recipe", "other words").replace("version: 1", "version: 2"), "b.yaml")
    )
    longer = load_checkpoint_card(_card(tmp_path, CARD.replace("steps: 2", "steps: 3"), "c.yaml"))
    assert base.recipe_sha256 == reworded.recipe_sha256 != longer.recipe_sha256
    assert base.with_overrides(train={"steps": 3}).recipe_sha256 == longer.recipe_sha256
    assert base.checkpoint_dir(tmp_path).name == "mini-clip"


@pytest.mark.parametrize(
    "edit, needle",
    [
        (("\ntrain:", "\ntrian:"), "unknown key 'trian'"),
        (("steps: 2", "steps: two"), "train key 'steps' has value 'two'"),
        (("steps: 2", "steps: 2, out: /tmp/x"), "unknown train key 'out'"),
        (("seed: 0, n_train", "seed: 0, n_test: 5, n_train"), "unknown key 'synthscenes.n_test'"),
        (("version: 1", "version: one"), "key 'version' has value 'one'"),
        (("version: 1", "version: true"), "key 'version' has value True"),
        (("n_train: 96", "n_train: many"), "key 'synthscenes.n_train' has value 'many'"),
        (("name: mini-clip", "name: ../mini-clip"), "a name, not a path"),
        (("name: mini-clip\n", ""), "missing key 'name'"),
    ],
)
def test_bad_cards_are_one_sentence_errors(tmp_path, edit, needle):
    path = _card(tmp_path, CARD.replace(*edit))
    with pytest.raises(SparcEvalError, match=needle) as info:
        load_checkpoint_card(path)
    assert str(path) in str(info.value)


def test_unknown_card_names_the_known_ones():
    with pytest.raises(SparcEvalError, match="known checkpoint cards: .*tiny-clip"):
        load_checkpoint_card("no-such-card")


@pytest.mark.slow
def test_card_reference_trains_once_then_reuses(tmp_path, monkeypatch):
    from sparc_eval.models.loaders import load_model

    monkeypatch.setenv(checkpoint_card.CHECKPOINT_ROOT_ENV, str(tmp_path / "ckpts"))
    monkeypatch.setenv(checkpoint_card.DATA_DIR_ENV, str(tmp_path / "data"))
    path = _card(tmp_path)
    model = load_model(f"card:{path}")
    described = model.describe()
    assert checkpoint_name(described) == "mini-clip" and "card mini-clip v1" in described["source"]
    folder = load_checkpoint_card(path).checkpoint_dir(tmp_path / "ckpts")
    assert Path(described["ref"]) == folder and (folder / "config.json").is_file()

    def no_training(cfg):
        raise AssertionError("a trained card must be reused")

    monkeypatch.setattr("sparc_eval.train.loop.train", no_training)
    assert ensure_checkpoint(load_checkpoint_card(path)) == folder
    assert load_model(f"card:{path}").describe()["sha256"] == described["sha256"]
    assert load_model(str(path)).describe()["sha256"] == described["sha256"]  # `--ckpt checkpoints/x.yaml`


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory) -> Path:
    """One `sparc-eval quickstart --fast` (one intra-op thread, as CI runs it), shared by the tests below."""
    out = tmp_path_factory.mktemp("quick")
    result = run_cli("quickstart", "--fast", "--out", out, "--data-dir", out / "data", env={"OMP_NUM_THREADS": "1"})
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out


def _quickstart_tasks() -> list[str]:
    from sparc_eval.tasks.card import list_card_paths, load_card

    return sorted(p.stem for p in list_card_paths() if "quickstart" in load_card(p).tags)


@pytest.mark.slow
def test_quickstart_fast_end_to_end(fast_run):
    out = fast_run
    tasks = _quickstart_tasks()
    assert {"synth-cls", "synth-retrieval", "synth-seg", "synth-det", "synth-kprecision", "synth-grounding"} <= set(tasks)
    records = sorted((out / "results").rglob("*.record.json"))
    seen = sorted(
        (json.loads(r.read_text())["checkpoint"]["ref"].split("/")[-1], json.loads(r.read_text())["task"]["name"])
        for r in records
    )
    assert seen == sorted((ckpt, task) for ckpt in ("tiny-clip", "tiny-sparc") for task in tasks)
    assert {p.name for p in (out / "leaderboard").iterdir()} == {"index.html", "leaderboard.csv", "leaderboard.md"}
    stdout = (out / "stdout.txt").read_text()
    assert "tiny-clip" in stdout and "tiny-sparc" in stdout

    # A second run reuses the checkpoints and records.
    again = run_cli("quickstart", "--fast", "--out", out, "--data-dir", out / "data", env={"OMP_NUM_THREADS": "1"})
    assert again.code == 0 and again.stdout.count("(reused)") == 2 * len(tasks)


@pytest.mark.slow
def test_gate_passes_a_fresh_replica_of_the_run(fast_run, tmp_path):
    """What CI does: the same quickstart --fast made again from nothing, gated with --exact against the first."""
    replica = tmp_path / "replica"
    result = run_cli("quickstart", "--fast", "--out", replica, "--data-dir", replica / "data", env={"OMP_NUM_THREADS": "1"})
    assert result.code == 0, result.stderr[-3000:]
    gate = run_cli("regress", "--exact", "--baseline", fast_run / "results", "--results", replica / "results", "--json")
    assert gate.code == 0, gate.stdout[-3000:] + gate.stderr[-2000:]
    report = json.loads(gate.stdout)
    assert report["problems"] == [] and report["not_in_baseline"] == []
    assert len({(m["checkpoint"], m["task"]) for m in report["metrics"]}) == 2 * len(_quickstart_tasks())


def _copy_results(fast_run: Path, dest: Path) -> Path:
    shutil.copytree(fast_run / "results", dest, ignore=shutil.ignore_patterns("cache"))
    return dest


@pytest.mark.slow
def test_gate_fails_a_results_folder_with_one_degraded_metric(fast_run, tmp_path):
    """One caption of one retrieval record loses its rank-1 hit; record and samples changed together, as a worse
    run would write them. `regress --exact` fails exactly that metric."""
    from sparc_eval.results.record import load_record, load_samples, write_record

    degraded = _copy_results(fast_run, tmp_path / "degraded")
    path = sorted(degraded.rglob("synth-retrieval-*.record.json"))[0]
    record = load_record(path)
    samples = load_samples(path, record)
    captions = [s for s in samples if s["kind"] == "caption"]
    hit = next(s for s in captions if s["rank"] == 1)
    hit["rank"], hit["t2i_r1"] = 2, 0
    expected = sum(s["rank"] == 1 for s in captions) / len(captions)  # by hand, from the degraded samples
    assert expected < record.metrics["t2i_r1"].value
    record.metrics["t2i_r1"].value = expected
    write_record(path, record, samples)

    gate = run_cli("regress", "--exact", "--baseline", fast_run / "results", "--results", degraded, "--json")
    assert gate.code == 1, gate.stdout[-3000:] + gate.stderr[-2000:]
    report = json.loads(gate.stdout)
    failed = [(m["task"], m["metric"]) for m in report["metrics"] if m["status"] == "REGRESSION"]
    assert failed == [("synth-retrieval", "t2i_r1")] and report["problems"] == []


@pytest.mark.slow
def test_gate_refuses_a_record_holding_nan_or_an_edited_samples_file(fast_run, tmp_path):
    nan = _copy_results(fast_run, tmp_path / "nan")
    path = sorted(nan.rglob("synth-cls-*.record.json"))[0]
    raw = json.loads(path.read_text())
    raw["metrics"]["top1"]["value"] = float("nan")
    path.write_text(json.dumps(raw))  # json writes NaN, as a careless tool would
    assert_one_line_error(run_cli("regress", "--exact", "--baseline", fast_run / "results", "--results", nan), "top1", "nan")

    edited = _copy_results(fast_run, tmp_path / "edited")
    path = sorted(edited.rglob("synth-cls-*.record.json"))[0]
    samples = path.with_name(path.name.replace(".record.json", ".samples.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    rows[0]["top1"] = 1 - rows[0]["top1"]  # edited by hand: the record's sha256 no longer matches
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("regress", "--exact", "--baseline", fast_run / "results", "--results", edited)
    assert_one_line_error(result, str(samples.name), "changed")

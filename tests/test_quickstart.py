"""Checkpoint cards (`card:` references) and `sparc-eval quickstart --fast` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

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


@pytest.mark.slow
def test_quickstart_fast_end_to_end(tmp_path):
    from sparc_eval.tasks.card import list_card_paths, load_card

    out = tmp_path / "quick"
    result = run_cli("quickstart", "--fast", "--out", out, "--data-dir", tmp_path / "data")
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tasks = sorted(p.stem for p in list_card_paths() if "quickstart" in load_card(p).tags)
    assert {"synth-cls", "synth-retrieval", "synth-seg", "synth-det", "synth-kprecision", "synth-grounding"} <= set(tasks)
    records = sorted((out / "results").rglob("*.record.json"))
    seen = sorted(
        (json.loads(r.read_text())["checkpoint"]["ref"].split("/")[-1], json.loads(r.read_text())["task"]["name"])
        for r in records
    )
    assert seen == sorted((ckpt, task) for ckpt in ("tiny-clip", "tiny-sparc") for task in tasks)
    assert {p.name for p in (out / "leaderboard").iterdir()} == {"index.html", "leaderboard.csv", "leaderboard.md"}
    assert "tiny-clip" in result.stdout and "tiny-sparc" in result.stdout

    # A second run reuses the checkpoints and records, and the gate passes against itself.
    again = run_cli("quickstart", "--fast", "--out", out, "--data-dir", tmp_path / "data")
    assert again.code == 0 and again.stdout.count("(reused)") == 2 * len(tasks)
    gate = run_cli("regress", "--baseline", out / "results", "--results", out / "results")
    assert gate.code == 0, gate.stdout[-3000:]

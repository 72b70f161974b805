"""Task cards: complete validation at load time surfacing as one-line CLI errors, lookup by name or path, a stable hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from sparc_eval.errors import SparcEvalError
from sparc_eval.tasks.card import BUILTIN_CARD_DIR, find_card, list_card_paths, load_card, validate_params
from sparc_eval.tasks.runner import get_runner

GOOD = {
    "name": "my-cls",
    "version": 1,
    "runner": "classification",
    "description": "a card for tests",
    "dataset": {"format": "imagefolder", "root": "{data}/somewhere", "split": "val"},
    "params": {"templates": "simple"},
}


def _write(tmp_path: Path, card: dict, name: str = "my-cls.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(card))
    return path


def _without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("card", "needles"),
    [
        ({**GOOD, "metric": "top1"}, ["unknown key 'metric'"]),
        (_without("runner"), ["missing key 'runner'"]),
        ({**GOOD, "params": {"templates": 3}}, ["params key 'templates' has value 3"]),
        ({**GOOD, "runner": "clasification"}, ["unknown runner 'clasification'", "classification"]),
        ({**GOOD, "params": {"top_k": 5}}, ["unknown params key 'top_k'", "templates"]),
        ({**GOOD, "dataset": {**GOOD["dataset"], "annotation": "x.json"}}, ["unknown reader option 'annotation'", "classnames"]),
    ],
    ids=["unknown-key", "missing-field", "bad-params-type", "unknown-runner", "unknown-param", "unknown-reader-option"],
)
def test_bad_card_is_a_one_line_error_and_writes_nothing(tmp_path, card, needles):
    path = _write(tmp_path, card)
    out = tmp_path / "results"
    result = run_cli("run", "--task", path, "--ckpt", tmp_path / "no-checkpoint", "--out", out)
    assert_one_line_error(result, str(path), *needles)
    assert not out.exists()


def test_unknown_task_is_a_one_line_error(tmp_path):
    out = tmp_path / "results"
    result = run_cli("run", "--task", "synth-clss", "--ckpt", tmp_path / "no-checkpoint", "--out", out)
    assert_one_line_error(result, "unknown task 'synth-clss'", "synth-cls")
    assert not out.exists()


def test_params_are_validated_when_the_card_is_loaded(tmp_path):
    with pytest.raises(SparcEvalError, match="unknown params key 'template' \\(allowed: classnames, templates\\)"):
        load_card(_write(tmp_path, {**GOOD, "params": {"template": "simple"}}))
    card = load_card(_write(tmp_path, GOOD))
    runner = get_runner(card.runner, card.path)
    assert card.runner_params == runner.Params(templates="simple", classnames=None)
    assert validate_params(runner.Params, {}, card) == runner.Params(templates="simple", classnames=None)


def test_every_builtin_card_validates():
    names = [p.stem for p in list_card_paths()]
    assert {"synth-cls", "imagenet-zs", "synth-retrieval", "coco-retrieval", "flickr-retrieval"} <= set(names)
    for path in list_card_paths():
        card = load_card(path)
        assert card.name == path.stem, path
        assert isinstance(card.runner_params, get_runner(card.runner).Params), path


def test_lookup_by_name_and_by_path(tmp_path, monkeypatch):
    assert find_card("synth-cls") == BUILTIN_CARD_DIR / "synth-cls.yaml"
    copy = _write(tmp_path, GOOD, "elsewhere.yaml")
    assert find_card(str(copy)) == copy
    assert load_card(str(copy)).name == "my-cls"  # by path, any file name
    with pytest.raises(SparcEvalError, match="does not exist"):
        find_card(str(tmp_path / "missing.yaml"))
    # SPARC_EVAL_CARDS folders come before the built-in cards, by name.
    _write(tmp_path, {**GOOD, "name": "synth-cls"}, "synth-cls.yaml")
    monkeypatch.setenv("SPARC_EVAL_CARDS", str(tmp_path))
    assert find_card("synth-cls") == tmp_path / "synth-cls.yaml"
    # A card found by name carries that name.
    assert find_card("elsewhere") == copy
    with pytest.raises(SparcEvalError, match="its name 'my-cls' differs from its file name"):
        load_card("elsewhere")
    # A name is never a path.
    for ref in ("../synth-cls", "/etc/passwd", "a/b", "..", ".hidden"):
        with pytest.raises(SparcEvalError, match="neither a card name"):
            find_card(ref)


def test_card_hash_ignores_comments_formatting_key_order_and_tags(tmp_path):
    plain = load_card(_write(tmp_path, GOOD, "a.yaml"))
    (tmp_path / "b.yaml").write_text(
        "# the same card, written by hand\n"
        "params: {templates: simple}   # inline mapping\n"
        "dataset:\n  split: val\n  root: '{data}/somewhere'\n  format: imagefolder\n"
        "description:   a card for tests\nrunner: classification\nversion: 1\nname: my-cls\n"
        "tags: [mine, quick]\n"
    )
    tagged = load_card(tmp_path / "b.yaml")
    assert tagged.sha256 == plain.sha256 and tagged.tags == ("mine", "quick")
    changed = load_card(_write(tmp_path, {**GOOD, "params": {"templates": "openai-imagenet"}}, "c.yaml"))
    assert changed.sha256 != plain.sha256


def test_builtin_card_hashes_are_those_the_records_were_made_with():
    """Moving to one card schema kept every built-in card's hash (records and the CI baseline are keyed by it)."""
    expected = {
        "synth-cls": "c3e12f343fb5",
        "synth-retrieval": "0431c5187eea",
        "synth-seg": "9e42546885f1",
        "synth-det": "bc818cb3223b",
        "synth-kprecision": "9069c4458e54",
        "synth-grounding": "410903249522",
        "coco-retrieval": "a731d4043dce",
        "imagenet-zs": "e1b44d1a1433",
    }
    assert {name: load_card(name).sha256[:12] for name in expected} == expected


def test_card_variant_sets_new_params_and_the_fast_quickstart_overrides_only_what_a_card_sets(tmp_path):
    """A variant once dropped params its card did not list (the like-for-like bench's train_backbone: true), so a
    'fine-tuned backbone' run scored the frozen protocol again without a word."""
    from sparc_eval.quickstart import FAST, quickstart_task_cards
    from sparc_eval.tasks.card import write_card_variant

    variant = write_card_variant(find_card("synth-det"), tmp_path / "det.yaml", "backbone", params={"train_backbone": True})
    assert load_card(variant).runner_params.train_backbone is True
    with pytest.raises(SparcEvalError, match="no_such_param"):
        load_card(write_card_variant(find_card("synth-det"), tmp_path / "bad.yaml", "typo", params={"no_such_param": 1}))

    fast = {load_card(p).name: load_card(p) for p in quickstart_task_cards(tmp_path / "qs", FAST)}
    assert fast["synth-det"].params["epochs"] == 1 and fast["synth-kprecision"].params["epochs"] == 1
    assert "epochs" not in fast["synth-cls"].params and "epochs" not in fast["synth-seg"].params

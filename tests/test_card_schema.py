"""One card schema: task and checkpoint cards equally strict, bounded reading, plugin failures, card folders, tags,
and `sparc-eval cards validate`."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from sparc_eval.checkpoint_cards import find_checkpoint_card, load_checkpoint_card
from sparc_eval.data.registry import READERS
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import CARD_MAX_BYTES
from sparc_eval.registry import Entry
from sparc_eval.tasks.card import load_card
from sparc_eval.tasks.runner import RUNNERS

TASK = {
    "name": "my-det",
    "version": 1,
    "runner": "detection",
    "dataset": {"format": "coco-instances", "root": "{data}/coco", "split": "val", "annotation": "a.json"},
    "fit_dataset": {"format": "coco-instances", "root": "{data}/coco", "split": "train", "annotation": "a.json"},
    "params": {"top_k": 10, "lr": 0.001},
    "synthscenes": {"seed": 0, "n_train": 96, "n_val": 32, "image_size": 64},
}
CHECKPOINT = {
    "name": "my-ckpt",
    "version": 1,
    "synthscenes": {"seed": 0, "n_train": 96, "n_val": 32, "image_size": 64},
    "train": {"arch": "tiny", "objective": "sparc", "objective_options": {"lambda_f": 5.0}, "steps": 2, "lr": 0.001},
}
LOADERS = {"task": load_card, "checkpoint": load_checkpoint_card}
GOOD = {"task": TASK, "checkpoint": CHECKPOINT}


def _card(tmp_path: Path, raw: dict, name: str = "card.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _edit(raw: dict, dotted: str, value) -> dict:
    """`raw` with the key at `dotted` (a.b.c) set to `value`, or removed when value is ...; the original untouched."""
    out = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


def _error(tmp_path: Path, kind: str, raw: dict) -> str:
    path = _card(tmp_path, raw)
    with pytest.raises(SparcEvalError) as info:
        LOADERS[kind](str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_the_good_cards_load(tmp_path):
    task = load_card(str(_card(tmp_path, TASK, "t.yaml")))
    assert task.runner_params.top_k == 10 and task.runner_params.epochs == 10  # defaults filled in
    assert task.dataset.options == {"annotation": "a.json"}
    ckpt = load_checkpoint_card(str(_card(tmp_path, CHECKPOINT, "c.yaml")))
    assert ckpt.train["objective_options"] == {"lambda_f": 5.0}


# The same mistakes are the same errors in both kinds of card.
SHARED = [
    ("version", True, "key 'version' has value True"),
    ("version", "1", "key 'version' has value '1'"),
    ("version", 1.5, "key 'version' has value 1.5"),
    ("version", -1, "greater than or equal to 0"),
    ("version", ..., "missing key 'version'"),
    ("name", "../escape", "a name, not a path"),
    ("name", "/etc/passwd", "a name, not a path"),
    ("name", "a/b", "a name, not a path"),
    ("name", "Upper", "a name, not a path"),
    ("name", "x..y", "a name, not a path"),
    ("name", 7, "key 'name' has value 7"),
    ("description", ["a"], "key 'description'"),
    ("extra_key", 1, "unknown key 'extra_key'"),
    ("synthscenes.n_train", "many", "key 'synthscenes.n_train' has value 'many'"),
    ("synthscenes.n_train", True, "key 'synthscenes.n_train' has value True"),
    ("synthscenes.n_train", 0, "key 'synthscenes.n_train' has value 0"),
    ("synthscenes.image_size", 8, "key 'synthscenes.image_size' has value 8"),
    ("synthscenes.seed", 1.0, "key 'synthscenes.seed' has value 1.0"),
    ("synthscenes.n_test", 5, "unknown key 'synthscenes.n_test'"),
    ("tags", "quickstart", "key 'tags' has value 'quickstart'"),
    ("tags", ["Quick Start"], "key 'tags.0'"),
    ("tags", [1], "key 'tags.0' has value 1"),
]


@pytest.mark.parametrize("kind", ["task", "checkpoint"])
@pytest.mark.parametrize(("key", "value", "needle"), SHARED, ids=[f"{k}={v!r}" for k, v, _ in SHARED])
def test_both_kinds_are_equally_strict(tmp_path, kind, key, value, needle):
    assert needle in _error(tmp_path, kind, _edit(GOOD[kind], key, value))


TASK_ONLY = [
    ("runner", 3, "key 'runner' has value 3"),
    ("dataset.split", "../val", "split '../val'"),
    ("dataset.format", "cocoo", "unknown reader 'cocoo'"),
    ("dataset.annotation", ..., "dataset: missing reader option 'annotation'"),
    ("dataset.annotation", 5, "reader option 'annotation' has value 5"),
    ("dataset.masks", "yes", "reader option 'masks' has value 'yes'"),
    ("dataset.palette", "x", "unknown reader option 'palette' (allowed: annotation, masks)"),
    ("fit_dataset.oops", 1, "fit_dataset: unknown reader option 'oops'"),
    ("fit_dataset", ..., "needs a 'fit_dataset'"),
    ("params", [1], "key 'params' has value [1]"),
    ("params.top_k", "5", "params key 'top_k' has value '5'"),
    ("params.top_k", True, "params key 'top_k' has value True"),
    ("params.top_k", 0, "params key 'top_k' has invalid value 0"),
    ("params.lr", float("nan"), "params key 'lr' has value nan"),
    ("params.lr", float("inf"), "params key 'lr' has value inf"),
    ("params.protocol", "voc", "params key 'protocol' has value 'voc'"),
    ("params.holdout_frequencies", "r", "params key 'holdout_frequencies' has value 'r'"),
    ("params.topk", 5, "unknown params key 'topk'"),
]


@pytest.mark.parametrize(("key", "value", "needle"), TASK_ONLY, ids=[f"{k}={v!r}" for k, v, _ in TASK_ONLY])
def test_task_cards_check_reader_options_and_runner_params_at_load(tmp_path, key, value, needle):
    assert needle in _error(tmp_path, "task", _edit(TASK, key, value))


CHECKPOINT_ONLY = [
    ("train", ..., "missing key 'train'"),
    ("train.steps", "two", "train key 'steps' has value 'two'"),
    ("train.steps", 0, "--steps must be at least 1"),
    ("train.lr", True, "train key 'lr' has value True"),
    ("train.out", "/tmp/x", "unknown train key 'out'"),
    ("train.arch", "tinyy", "train key 'arch': unknown architecture 'tinyy'"),
    ("train.objective", "sparcc", "train key 'objective': unknown objective 'sparcc'"),
    ("train.objective_options.lambda_f", "5", "objective_options key 'lambda_f' has value '5'"),
    ("train.objective_options.lambda_x", 1.0, "unknown train objective_options key 'lambda_x'"),
    ("train.objective_options.fine_tokens", "some", "unknown fine_tokens 'some'"),
]


@pytest.mark.parametrize(("key", "value", "needle"), CHECKPOINT_ONLY, ids=[f"{k}={v!r}" for k, v, _ in CHECKPOINT_ONLY])
def test_checkpoint_cards_check_the_recipe_at_load(tmp_path, key, value, needle):
    assert needle in _error(tmp_path, "checkpoint", _edit(CHECKPOINT, key, value))


def test_a_card_of_the_other_kind_is_named(tmp_path):
    assert "is a checkpoint card, not a task card" in _error(tmp_path, "task", CHECKPOINT)
    assert "is a task card, not a checkpoint card" in _error(tmp_path, "checkpoint", TASK)


# ------------------------------------------------------------------------------------------- plugins


@pytest.mark.parametrize("registry, field", [(RUNNERS, "runner"), (READERS, "dataset.format")])
def test_a_card_naming_a_plugin_that_fails_to_import_names_card_and_plugin(tmp_path, monkeypatch, registry, field):
    monkeypatch.setitem(registry.entries(), "broken", Entry("broken", "no_such_module_for_sparc_tests:thing", "broken-plugin"))
    message = _error(tmp_path, "task", _edit(TASK, field, "broken"))
    assert "plugin broken-plugin" in message and "'broken'" in message and "failed to import" in message


# ------------------------------------------------------------------------------------------ bounded input


@pytest.mark.parametrize("kind", ["task", "checkpoint"])
def test_yaml_aliases_are_refused_before_they_expand(tmp_path, kind):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb + ("runner: x\n" if kind == "task" else "train: {}\n"))
    start = time.perf_counter()
    with pytest.raises(SparcEvalError, match="YAML aliases .* are not allowed") as info:
        LOADERS[kind](str(path))
    assert str(path) in str(info.value) and time.perf_counter() - start < 5  # 9^... items were never built


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"name: x\nname: y\n", "duplicate key 'name'"),
        (b"name: caf\xe9\n", "is not UTF-8 text"),
        (b"name: !!python/object/apply:os.system [echo hi]\n", "is not valid YAML"),
        (b"[" * 50_000, "nests too deeply"),
        (b"- a\n- b\n", "must be a YAML mapping"),
        (b"name: [unclosed\n", "is not valid YAML"),
    ],
    ids=["duplicate-key", "latin-1", "python-tag", "deep-nesting", "a-list", "syntax"],
)
def test_unreadable_cards_are_one_line(tmp_path, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    for load in LOADERS.values():
        with pytest.raises(SparcEvalError, match=needle) as info:
            load(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_card_above_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(TASK) + "description: " + "x" * CARD_MAX_BYTES + "\n")
    with pytest.raises(SparcEvalError, match="larger than the 1 MiB a task card may take"):
        load_card(str(path))


# ------------------------------------------------------------------------------------- card folders, tags


def test_card_folders_hold_both_kinds_and_come_before_the_builtin_ones(tmp_path, monkeypatch):
    folder = tmp_path / "cards"
    folder.mkdir()
    _card(folder, {**TASK, "name": "probe", "tags": ["mine"]}, "probe.yaml")
    _card(folder, {**CHECKPOINT, "name": "probe-ckpt"}, "probe-ckpt.yaml")
    monkeypatch.setenv("SPARC_EVAL_CARDS", str(folder))
    assert load_card("probe").tags == ("mine",)
    assert find_checkpoint_card("probe-ckpt") == folder / "probe-ckpt.yaml"  # what card:probe-ckpt resolves to
    with pytest.raises(SparcEvalError, match="unknown task 'probe-ckpt'"):
        load_card("probe-ckpt")  # a checkpoint card is not a task
    for ref in ("../probe-ckpt", "/etc/hostname", "cards/probe-ckpt"):  # card:../x never leaves the card folders
        with pytest.raises(SparcEvalError, match="neither a card name"):
            find_checkpoint_card(ref)


def test_tasks_and_cards_options_on_the_command_line(tmp_path):
    folder = tmp_path / "cards"
    folder.mkdir()
    _card(folder, {**TASK, "name": "probe", "tags": ["mine"]}, "probe.yaml")
    listed = run_cli("tasks", "--cards", folder, "--tag", "mine", "--json")
    assert listed.code == 0, listed.stderr
    assert "probe" in listed.stdout and "synth-cls" not in listed.stdout
    quick = run_cli("tasks", "--tag", "quickstart")
    assert (
        quick.code == 0 and "synth-cls" in quick.stdout and "coco-retrieval" not in quick.stdout and "probe" not in quick.stdout
    )
    assert_one_line_error(run_cli("tasks", "--cards", tmp_path / "nope"), "card folder", "nope")


def test_cards_validate(tmp_path):
    folder = tmp_path / "cards"
    folder.mkdir()
    _card(folder, TASK, "good-task.yaml")
    _card(folder, CHECKPOINT, "good-ckpt.yaml")
    ok = run_cli("cards", "validate", folder)
    assert ok.code == 0, ok.stderr
    assert "2 cards valid (1 checkpoint card, 1 task card)" in ok.stdout and not ok.stderr.strip()

    bad_task = _card(folder, _edit(TASK, "version", True), "bad-task.yaml")
    bad_ckpt = _card(folder, _edit(CHECKPOINT, "synthscenes.n_train", "many"), "bad-ckpt.yaml")
    (folder / "neither.yaml").write_text("name: x\n")
    bad = run_cli("cards", "validate", folder)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.code == 2 and "Traceback" not in bad.stderr and len(lines) == 3, bad.stderr
    assert str(bad_task) in lines[1] and "'version'" in lines[1]
    assert str(bad_ckpt) in lines[0] and "'synthscenes.n_train'" in lines[0]
    assert str(folder / "neither.yaml") in lines[2] and "neither a task card" in lines[2]

    # No PATH: every built-in card and every card in the card folders.
    everything = run_cli("cards", "validate")
    assert everything.code == 0 and "task card" in everything.stdout and "checkpoint card" in everything.stdout
    with_folder = run_cli("cards", "validate", "--cards", folder)
    assert with_folder.code == 2 and str(bad_task) in with_folder.stderr


def test_a_card_in_a_card_folder_is_named_as_its_file(tmp_path, monkeypatch):
    from sparc_eval.cli.cards import validate_card_file

    folder = tmp_path / "cards"
    folder.mkdir()
    path = _card(folder, TASK, "not-my-det.yaml")
    assert validate_card_file(path) == "task card"  # anywhere else, a card given by path may have any file name
    monkeypatch.setenv("SPARC_EVAL_CARDS", str(folder))
    with pytest.raises(SparcEvalError, match="its name 'my-det' differs from its file name"):
        validate_card_file(path)

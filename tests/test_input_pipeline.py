"""The training input pipeline: a DataLoader over steps whose items are functions of (seed, step) alone, so worker
count, resume point and rank slicing change nothing but the speed."""

from __future__ import annotations

import json
import os

import pytest
import torch
from micro_training import MICRO

from sparc_eval.cli import main
from sparc_eval.models.sparc import PRESETS, create_model
from sparc_eval.train.batches import PairBatches, batch_loader
from sparc_eval.train.loop import TrainConfig, train

LOSS_KEYS = ("step", "lr", "loss", "global", "fine", "fine_matched", "fine_mismatched", "align_nonzero", "logit_scale")


@pytest.fixture(autouse=True)
def micro_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", MICRO)


@pytest.fixture(scope="module")
def micro_model():
    PRESETS["micro"] = MICRO
    try:
        return create_model("micro")
    finally:
        del PRESETS["micro"]


def _losses(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in LOSS_KEYS if k in r} for r in rows]


def _loader(batches, model, **kw):
    options = dict(start=0, steps=6, rank=0, local=8, tokenize=model.tokenizer, num_workers=0, pin_memory=False, seed=0)
    return list(batch_loader(batches, **{**options, **kw}))


def test_worker_count_changes_nothing_but_speed(synth_root, tmp_path):
    base = dict(data=str(synth_root), arch="micro", steps=4, batch_size=8, warmup=2, log_every=1)
    zero = train(TrainConfig(out=str(tmp_path / "w0"), num_workers=0, **base))
    two = train(TrainConfig(out=str(tmp_path / "w2"), num_workers=2, **base))
    assert _losses(zero) == _losses(two)
    assert [json.loads((p / "config.json").read_text())["training"]["num_workers"] for p in (zero, two)] == [0, 2]


def test_loader_items_are_the_batches_of_their_steps(synth_root, micro_model):
    batches = PairBatches(synth_root, batch_size=8, seed=3, transform=micro_model.preprocess)
    with_workers = _loader(batches, micro_model, num_workers=2)
    assert len(with_workers) == 6
    for step, (images, tokens) in enumerate(with_workers):
        expected_images, captions = batches.load(batches.rows(step))
        assert torch.equal(images, expected_images) and torch.equal(tokens, micro_model.tokenize(captions))
    # A loader started at step 3 (a resumed run) yields exactly the later items: no sampler state to restore.
    resumed = _loader(batches, micro_model, start=3)
    for (a, b), (c, d) in zip(with_workers[3:], resumed):
        assert torch.equal(a, c) and torch.equal(b, d)
    # Two ranks' slices make up the global batch.
    rank0, rank1 = _loader(batches, micro_model, local=4), _loader(batches, micro_model, rank=1, local=4)
    for (whole, _), (first, _), (second, _) in zip(with_workers, rank0, rank1):
        assert torch.equal(torch.cat([first, second]), whole)


def test_loader_leaves_the_global_random_state_alone(synth_root, micro_model):
    """The training steps draw from the global RNG; a loader that drew its worker seed from it too would make a
    resumed run (a new loader mid-run) differ from an uninterrupted one."""
    batches = PairBatches(synth_root, batch_size=8, seed=0, transform=micro_model.preprocess)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    _loader(batches, micro_model, steps=2, num_workers=1)
    assert torch.equal(before, torch.get_rng_state())


def _cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def test_workers_option_is_checked_and_its_default_recorded(synth_root, tmp_path, capsys, monkeypatch):
    common = ["train", "--data", synth_root, "--arch", "micro", "--steps", 1, "--batch-size", 8]
    code, err = _cli(capsys, *common, "--workers", -1, "--out", tmp_path / "bad")
    assert code == 2 and "--workers must be between 0 and" in err and "got -1" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
    # Thousands of worker processes is a typo, refused before any fork.
    code, err = _cli(capsys, *common, "--workers", 100_000, "--out", tmp_path / "bad")
    assert code == 2 and f"--workers must be between 0 and {4 * (os.cpu_count() or 1)}, got 100000" in err, err
    assert not (tmp_path / "bad").exists()
    monkeypatch.setenv("SPARC_EVAL_NUM_WORKERS", "1")  # the default: half the CPUs unless the environment says
    code, err = _cli(capsys, *common, "--out", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["num_workers"] == 1

"""DDP: two gloo processes, each with half of the global batch, reproduce the single-process run."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from sparc_eval.models.sparc import PRESETS
from sparc_eval.train.loop import TrainConfig, train

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# fine_mismatched rolls captions within each process's slice and align_nonzero averages per-process
# means, so those two diagnostics legitimately differ between 1 and 2 processes.
COMPARED = ("loss", "global", "fine", "fine_matched", "logit_scale")


def _worker(rank: int, world: int, port: int, kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ["SPARC_EVAL_NO_PROGRESS"] = "1"
    torch.set_num_threads(1)
    PRESETS["micro"] = MICRO
    train(TrainConfig(**kwargs))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_match_one(synth_root, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    kwargs = dict(data=str(synth_root), arch="micro", steps=4, batch_size=8, warmup=1, log_every=1, lr=2e-3, device="cpu")
    single = train(TrainConfig(out=str(tmp_path / "single"), **kwargs))
    mp.spawn(_worker, args=(2, _free_port(), {**kwargs, "out": str(tmp_path / "ddp")}), nprocs=2, join=True)
    one, two = _rows(single), _rows(tmp_path / "ddp")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    # The runs moved: losses change over the steps, so agreeing at every step checks the gradients too.
    assert one[-1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-3)
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["batch_size"] == 8


# MGCA's prototype loss depends on the global batch only through Sinkhorn, which balances over every rank.
_BASELINE_OPTIONS = {
    "filip": {"lambda_g": 1.0},
    "pacl": {"lambda_g": 1.0},
    "gloria": {},
    "mgca": {"n_prototypes": 16, "freeze_prototypes_steps": 2},
}


def _worker_each(rank: int, world: int, port: int, runs: list[dict]) -> None:
    """One process group, every baseline trained in turn (one spawn instead of four)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ["SPARC_EVAL_NO_PROGRESS"] = "1"
    torch.set_num_threads(1)
    PRESETS["micro"] = MICRO
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        for kwargs in runs:
            train(TrainConfig(**kwargs))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_for_each_baseline(synth_root, tmp_path, monkeypatch):
    """FILIP, PACL and GLoRIA gather patch and token embeddings across ranks; MGCA's prototypes sit outside DDP
    (gradients averaged by the trainer) and its Sinkhorn balances over the global batch: 2 processes equal 1."""
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    base = dict(data=str(synth_root), arch="micro", steps=4, batch_size=8, warmup=1, log_every=1, lr=2e-3, device="cpu")
    runs = {name: {**base, "objective": name, "objective_options": options} for name, options in _BASELINE_OPTIONS.items()}
    for name, kwargs in runs.items():
        train(TrainConfig(out=str(tmp_path / "single" / name), **kwargs))
    ddp_runs = [{**kwargs, "out": str(tmp_path / "ddp" / name)} for name, kwargs in runs.items()]
    mp.spawn(_worker_each, args=(2, _free_port(), ddp_runs), nprocs=2, join=True)
    for objective in runs:
        one, two = _rows(tmp_path / "single" / objective), _rows(tmp_path / "ddp" / objective)
        compared = ("loss", "global", "fine", "logit_scale", *(("proto",) if objective == "mgca" else ()))
        for a, b in zip(one, two):
            for key in compared:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (objective, a["step"], key)
        assert len(two) == 4 and one[-1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-3), objective
    # MGCA's prototypes moved once unfrozen, identically in both runs
    from safetensors.torch import load_file

    single, ddp = (load_file(str(tmp_path / kind / "mgca" / "objective.safetensors")) for kind in ("single", "ddp"))
    torch.testing.assert_close(single["prototypes"], ddp["prototypes"], rtol=1e-5, atol=1e-6)
    assert int(single["steps_seen"]) == 4

"""On a CUDA GPU: the trainer (DataLoader workers, pinned memory, bf16 autocast) and every SynthScenes task, each
compared with the same work on the CPU. Skipped without CUDA; bench/gpu_check.sh runs them on a GPU machine.

Tolerances: the GPU computes the same fp32 arithmetic in another order (TF32 is switched off here), so training
losses agree to about 1e-4 over a few steps; metrics of tasks without a fitting stage may differ only where a
near-tie flips, at most two samples' worth; tasks that fit a head or a captioner follow the fitted trajectory,
which compounds those differences over hundreds of steps, so their metrics are compared within 0.05 absolute
or 10 % relative.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparc_eval.train.batches import PairBatches, batch_loader
from sparc_eval.train.loop import TrainConfig, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LOSS_KEYS = ("loss", "global", "fine", "fine_matched", "fine_mismatched", "logit_scale")


@pytest.fixture(autouse=True)
def exact_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """The tiny preset trained 6 steps on the CPU and on the GPU (2 workers, pinned memory), same seed."""
    folder = tmp_path_factory.mktemp("gpu-train")
    base = dict(data=str(synth_root), arch="tiny", steps=6, batch_size=16, warmup=2, log_every=1, num_workers=2)
    cpu = train(TrainConfig(out=str(folder / "cpu"), device="cpu", **base))
    gpu = train(TrainConfig(out=str(folder / "gpu"), device="cuda", **base))
    bf16 = train(TrainConfig(out=str(folder / "bf16"), device="cuda", bf16=True, **base))
    return cpu, gpu, bf16


def test_training_on_the_gpu_matches_the_cpu(trained):
    cpu, gpu, bf16 = trained
    for a, b in zip(_rows(cpu), _rows(gpu)):
        for key in LOSS_KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert _rows(cpu)[-1]["loss"] != pytest.approx(_rows(cpu)[0]["loss"], rel=1e-3)  # the runs moved
    for a, b in zip(_rows(cpu), _rows(bf16)):  # bf16 towers, fp32 losses: close, not equal
        assert math.isfinite(b["loss"]) and b["loss"] == pytest.approx(a["loss"], rel=5e-2)
    config = json.loads((gpu / "config.json").read_text())
    assert config["training"]["num_workers"] == 2


def test_batches_are_pinned_for_a_cuda_device(synth_root):
    from sparc_eval.models.sparc import create_model

    model = create_model("tiny")
    batches = PairBatches(synth_root, 8, 0, model.preprocess)
    for pin in (True, False):
        images, tokens = next(
            batch_loader(
                batches, start=0, steps=1, rank=0, local=8, tokenize=model.tokenizer, num_workers=1, pin_memory=pin, seed=0
            )
        )
        assert images.is_pinned() == pin and tokens.is_pinned() == pin


def _synth_cards() -> list:
    from sparc_eval.tasks.card import list_card_paths, load_card

    return [card for card in map(load_card, list_card_paths()) if "synthscenes" in card.tags]


def test_every_synth_task_on_the_gpu_matches_the_cpu(trained, synth_data_dir, tmp_path):
    from sparc_eval.evaluation import run_evaluation
    from sparc_eval.tasks.runner import get_runner

    _, gpu_ckpt, _ = trained
    cards = _synth_cards()
    assert len(cards) >= 6
    for card in cards:
        records = {
            device: run_evaluation(
                str(gpu_ckpt), card.path, out=tmp_path / device, data_dir=synth_data_dir, device=device, cache=False
            ).record
            for device in ("cpu", "cuda")
        }
        cpu, gpu = records["cpu"], records["cuda"]
        assert gpu.device.startswith("cuda") and cpu.n_samples == gpu.n_samples
        fits = get_runner(card.runner).has_fit_stage
        for name, metric in cpu.metrics.items():
            a, b = metric.value, gpu.metrics[name].value
            assert (a is None) == (b is None), (card.name, name)
            if a is None:
                continue
            tolerance = max(0.05, 0.1 * max(abs(a), abs(b))) if fits else max(2 / cpu.n_samples, 1e-4 * max(1.0, abs(a)))
            assert abs(a - b) <= tolerance, (card.name, name, a, b)

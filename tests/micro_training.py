"""What the in-process training tests share: a one-layer model preset and a run stopped as Ctrl-C stops it."""

from __future__ import annotations

import pytest

from sparc_eval.train import loop

# A one-layer model for the in-process runs (the CLI runs use the real tiny preset); registered as
# PRESETS["micro"] by each test module that trains it.
MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def train_interrupted(monkeypatch, cfg: loop.TrainConfig, after_steps: int) -> None:
    """`train(cfg)` stopped by a KeyboardInterrupt after `after_steps` training steps."""
    real_step, calls = loop.train_step, []

    def dying_step(*args, **kwargs):
        if len(calls) == after_steps:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dying_step)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.train(cfg)
    finally:
        monkeypatch.setattr(loop, "train_step", real_step)

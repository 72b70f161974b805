"""Shared fixtures: offline settings, a CLI runner that reports exit code and output, a small SynthScenes tree."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPARC_EVAL_NO_PROGRESS", "1")
# The suite runs as `pytest -n 2` on 2 cores: one intra-op thread per worker (and per CLI subprocess)
# avoids oversubscription, which made training steps 15-20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Likewise no DataLoader worker processes by default (sparc-eval's default is half the CPUs); tests that exercise
# workers ask for them with --num-workers / num_workers.
os.environ.setdefault("SPARC_EVAL_NUM_WORKERS", "0")

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore new examples on every local run; CI replays a fixed sequence, so that a merge is
# never decided by which examples were drawn (a failure found locally becomes a fix and an explicit case).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None) -> CliResult:
    """Run `sparc-eval ARGS` in a fresh process, exactly as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "sparc_eval", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """A user error: exit code 2, one line on stderr naming the offending thing, no traceback."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small SynthScenes tree shared by the whole session (generated once, read-only by convention)."""
    from sparc_eval.data.synth import generate_synthscenes

    root = tmp_path_factory.mktemp("synthscenes")
    generate_synthscenes(root, seed=0, n_train=96, n_val=32, image_size=64, workers=1)
    return root


@pytest.fixture(scope="session")
def synth_data_dir(synth_root, tmp_path_factory) -> Path:
    """A `--data-dir` in which every built-in SynthScenes card finds the small `synth_root` tree.

    Each card reads `card.synthscenes_dir(data_dir)` (named by its generator parameters); here each such
    name is a link to the session's small tree, so `sparc-eval run --task synth-... --data-dir THIS`
    runs the real card on 96 train / 32 val / 32 test images without generating anything.
    """
    from sparc_eval.tasks.card import list_card_paths, load_card

    data_dir = tmp_path_factory.mktemp("data")
    for path in list_card_paths():
        card = load_card(path)
        specs = [card.dataset, *([card.fit_dataset] if card.fit_dataset else [])]
        if any("{synthscenes}" in spec.root for spec in specs):
            link = card.synthscenes_dir(data_dir)
            if not link.exists():
                link.symlink_to(synth_root, target_is_directory=True)
    return data_dir


@pytest.fixture(scope="session")
def tiny_sparc_ckpt(tmp_path_factory) -> Path:
    """A freshly initialised (untrained) tiny SPARC model saved as a checkpoint folder, shared by the session."""
    import torch

    from sparc_eval.models.checkpoint import save_checkpoint
    from sparc_eval.models.objectives import build_objective
    from sparc_eval.models.sparc import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-sparc"
    return save_checkpoint(create_model("tiny"), folder, objective=build_objective("sparc").describe())

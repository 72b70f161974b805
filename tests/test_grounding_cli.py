"""`sparc-eval run --task synth-grounding` end to end on the session's small SynthScenes tree, for a
SPARC checkpoint folder and an open_clip CLIP, plus a bad card failing on one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from sparc_eval.results.record import load_record, load_samples
from sparc_eval.tasks.grounding import GroundingRunner

LIMIT = 12


@pytest.fixture(scope="module")
def sparc_ckpt(tmp_path_factory) -> Path:
    """A freshly initialised tiny SPARC model saved as a checkpoint folder (no training needed here)."""
    import torch

    from sparc_eval.models.checkpoint import save_checkpoint
    from sparc_eval.models.objectives import build_objective
    from sparc_eval.models.sparc import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-sparc"
    return save_checkpoint(create_model("tiny"), folder, objective=build_objective("sparc", lambda_f=2.0).describe())


def _run(ckpt: str, data_dir: Path, out: Path, *extra: str):
    result = run_cli(
        "run",
        "--task",
        "synth-grounding",
        "--ckpt",
        ckpt,
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--limit",
        str(LIMIT),
        "--batch-size",
        "8",
        "--json",
        *extra,
    )
    assert result.code == 0, result.stderr
    (raw,) = json.loads(result.stdout)
    (path,) = out.rglob("synth-grounding-*.record.json")
    return raw, path


def _check_record(path: Path, n_patches: int) -> dict:
    record = load_record(path)
    samples = load_samples(path, record)
    assert record.n_samples == len(samples) == LIMIT
    assert [m for m in record.metrics] == list(GroundingRunner.metrics)
    values = record.metric_values()
    # The metric values themselves are recomputed from the model by tests/test_runner_contract.py.
    words = [w for s in samples for w in s["words"]]
    assert words and {w["kind"] for w in words} <= {"colour", "shape", "size"}
    assert all(w["n_patches"] == n_patches and w["token_positions"] for w in words)
    for name in ("pointing_acc", "pointing_chance", "mass_in_object", "mass_chance", "nnz_share"):
        assert 0.0 <= values[name] <= 1.0
    assert 0.0 < values["pointing_chance"] < 0.5  # objects cover a minority of patches
    assert values["fine_loss_matched"] > 0 and values["fine_loss_mismatched"] > 0
    assert 0.0 <= values["position_r2"] <= 1.0
    assert record.metrics["pointing_acc"].higher_is_better is True and record.metrics["mass_chance"].higher_is_better is None
    return record.info


def test_run_sparc_checkpoint(sparc_ckpt, synth_data_dir, tmp_path):
    raw, path = _run(str(sparc_ckpt), synth_data_dir, tmp_path / "results")
    info = _check_record(path, n_patches=64)
    assert raw["task"]["runner"] == "grounding"
    assert info["alignment_weights"].startswith("sparc_alignment_weights") and info["head"] == "local"
    assert "g_v(patch)" in info["head_path"]
    assert info["mentions"]["unaligned_captions"] == 0


def test_run_openclip_clip(synth_data_dir, tmp_path):
    _, path = _run("openclip:ViT-S-32", synth_data_dir, tmp_path / "results")
    info = _check_record(path, n_patches=49)  # 224 px, patch 32
    assert "softmax" in info["alignment_weights"] and "MaskCLIP" in info["head_path"]


def test_bad_mentions_file_is_one_line_and_writes_nothing(sparc_ckpt, synth_data_dir, tmp_path):
    card = (Path(__file__).parents[1] / "tasks" / "synth-grounding.yaml").read_text()
    bad = tmp_path / "bad-grounding.yaml"
    bad.write_text(card.replace("{synthscenes}/scenes.json", "{synthscenes}/no-such-scenes.json"))
    out = tmp_path / "results"
    result = run_cli("run", "--task", bad, "--ckpt", sparc_ckpt, "--data-dir", synth_data_dir, "--out", out, "--limit", "2")
    assert_one_line_error(result, "no-such-scenes.json")
    assert not list(out.rglob("*.json*"))

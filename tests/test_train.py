"""The trainer: what a run writes, determinism, exact resume, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from micro_training import MICRO, train_interrupted
from PIL import Image

from sparc_eval import load_model
from sparc_eval.cli import main
from sparc_eval.errors import SparcEvalError
from sparc_eval.models.sparc import PRESETS, create_model
from sparc_eval.train.batches import PairBatches
from sparc_eval.train.loop import TrainConfig, learning_rate, periodic_dir, train

# Everything a log row holds except timings, which differ from run to run.
LOSS_KEYS = ("step", "lr", "loss", "global", "fine", "images", "fine_matched", "fine_mismatched", "align_nonzero", "logit_scale")


@pytest.fixture(autouse=True)
def micro_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", MICRO)


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="micro", steps=4, batch_size=8, warmup=2, log_every=1)
    return TrainConfig(**{**base, **kw})


def _losses(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in LOSS_KEYS if k in r} for r in rows]


def _in_process_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def _assert_cli_error(capsys, needle, *args) -> None:
    code, err = _in_process_cli(capsys, "train", *args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], (needle, lines[0])


@pytest.mark.slow
def test_cli_train_writes_a_loadable_checkpoint(synth_root, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train", "--data", synth_root, "--steps", 3, "--batch-size", 8, "--log-every", 2, "--lambda-f", 5, "--out", out
    )
    assert result.code == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "loss_curve.png", "model.safetensors", "train_log.jsonl"]
    assert not periodic_dir(out).exists()
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == {"name": "sparc", "lambda_g": 0.5, "lambda_f": 5.0, "sparsity": True, "weights": "sparse"}
    training = config["training"]
    assert (training["steps"], training["steps_done"], training["batch_size"], training["seed"]) == (3, 3, 8, 0)
    assert config["data"]["manifest_sha256"] and config["data"]["n_images"] == 96
    assert set(config["provenance"]["versions"]) >= {"torch", "open_clip_torch"}
    rows = _losses(out)
    assert [r["step"] for r in rows] == [2, 3]  # every --log-every steps, and the last
    assert rows[-1]["loss"] == pytest.approx(0.5 * rows[-1]["global"] + 5.0 * rows[-1]["fine"], rel=1e-5)
    assert rows[-1]["fine"] == rows[-1]["fine_matched"]
    with Image.open(out / "loss_curve.png") as img:
        assert img.size[0] > 800
    model = load_model(str(out))
    assert model.describe()["objective"]["lambda_f"] == 5.0


def test_same_seed_same_losses_and_exact_resume(synth_root, tmp_path, monkeypatch):
    straight = train(_cfg(synth_root, tmp_path / "a"))
    again = train(_cfg(synth_root, tmp_path / "b"))
    assert _losses(straight) == _losses(again)
    other_seed = train(_cfg(synth_root, tmp_path / "c", seed=1))
    assert _losses(other_seed)[0]["loss"] != _losses(straight)[0]["loss"]

    # Interrupt a run after step 3 (periodic checkpoint at step 2), then resume it.
    train_interrupted(monkeypatch, _cfg(synth_root, tmp_path / "d", save_every=2), after_steps=3)
    assert not (tmp_path / "d").exists()
    assert [p.name for p in periodic_dir(tmp_path / "d").iterdir()] == ["step_0000002"]
    with pytest.raises(SparcEvalError, match="pass --resume"):
        train(_cfg(synth_root, tmp_path / "d", save_every=2))
    resumed = train(_cfg(synth_root, tmp_path / "d", save_every=2, resume=True))
    assert _losses(resumed) == _losses(straight)
    assert not periodic_dir(resumed).exists()
    a, b = load_model(str(straight)), load_model(str(resumed))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_clip_objective_and_ablations_run(synth_root, tmp_path):
    clip = _losses(train(_cfg(synth_root, tmp_path / "clip", objective="clip", steps=1)))[0]
    assert "fine" not in clip and clip["loss"] == clip["global"]
    assert clip["fine_matched"] > 0  # the diagnostic is measured for CLIP too
    softmax = train(_cfg(synth_root, tmp_path / "soft", steps=1, objective_options={"sparsity": False, "weights": "softmax"}))
    assert json.loads((softmax / "config.json").read_text())["objective"]["weights"] == "softmax"
    # Softmax weights are dense: every patch keeps a non-zero weight.
    assert _losses(softmax)[0]["align_nonzero"] == pytest.approx(1.0)
    fp32 = _losses(train(_cfg(synth_root, tmp_path / "fp32", steps=1)))[0]
    bf16 = _losses(train(_cfg(synth_root, tmp_path / "bf16", steps=1, bf16=True)))[0]
    unique = train(_cfg(synth_root, tmp_path / "unique", steps=1, objective_options={"fine_tokens": "unique"}))
    assert json.loads((unique / "config.json").read_text())["objective"]["fine_tokens"] == "unique"
    # Same init and batch: the all-token probe agrees with the paper objective's run, the trained loss (fewer tokens) does not.
    assert _losses(unique)[0]["fine_matched"] == pytest.approx(fp32["fine_matched"])
    assert _losses(unique)[0]["fine"] != pytest.approx(fp32["fine"])
    images = _losses(train(_cfg(synth_root, tmp_path / "images", steps=1, objective_options={"lambda_images": 2.0})))[0]
    assert images["loss"] == pytest.approx(fp32["loss"] + 2.0 * images["images"], rel=1e-5)
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05) and bf16["loss"] != fp32["loss"]


def test_batches_hold_distinct_images_and_cover_each_epoch(synth_root):
    model = create_model("micro")
    batches = PairBatches(synth_root, batch_size=16, seed=0, transform=model.preprocess)
    paths = batches.dataset.image_paths
    assert batches.batches_per_epoch == 96 // 16
    epoch = [r for step in range(batches.batches_per_epoch) for r in batches.rows(step)]
    images = [str(paths[r]) for r in epoch]
    assert len(set(images)) == len(images) == 96  # each image once per epoch, so never twice in a batch
    captions_next_epoch = {str(paths[r]): batches.dataset.captions[r] for step in range(6, 12) for r in batches.rows(step)}
    captions_first = {str(paths[r]): batches.dataset.captions[r] for r in epoch}
    assert captions_next_epoch != captions_first  # a fresh caption draw per epoch
    assert batches.rows(3) == PairBatches(synth_root, 16, 0, model.preprocess).rows(3)


def test_learning_rate_schedule():
    cfg = TrainConfig(data="", out="", steps=110, lr=1.0, warmup=10)
    assert [learning_rate(s, cfg) for s in (0, 9)] == [0.1, 1.0]
    assert learning_rate(10, cfg) == 1.0 and learning_rate(60, cfg) == pytest.approx(0.5)
    assert learning_rate(109, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


@pytest.fixture
def interrupted(synth_root, tmp_path, monkeypatch):
    """An output path whose run stopped after a periodic checkpoint at step 1."""
    out = tmp_path / "run"
    train_interrupted(monkeypatch, _cfg(synth_root, out, save_every=1), after_steps=1)
    return out, periodic_dir(out) / "step_0000001"


def _train_args(synth_root, out, *extra):
    return [
        "--data",
        synth_root,
        "--arch",
        "micro",
        "--steps",
        4,
        "--batch-size",
        8,
        "--warmup",
        2,
        "--log-every",
        1,
        "--save-every",
        1,
        "--out",
        out,
        *extra,
    ]


def test_resume_with_truncated_weights(synth_root, interrupted, capsys):
    out, step = interrupted
    data = (step / "model.safetensors").read_bytes()
    (step / "model.safetensors").write_bytes(data[: len(data) // 3])
    _assert_cli_error(capsys, "model.safetensors is not a readable safetensors file", *_train_args(synth_root, out, "--resume"))
    assert not out.exists()


def test_resume_with_weights_of_another_architecture(synth_root, interrupted, tmp_path, capsys):
    from sparc_eval.models.checkpoint import save_checkpoint

    out, step = interrupted
    other = save_checkpoint(create_model("micro", embed_dim=48), tmp_path / "other")
    shutil.copy(other / "model.safetensors", step / "model.safetensors")
    _assert_cli_error(
        capsys,
        "does not fit architecture micro: tensor g_v.weight has shape [48, 32] but the model expects [32, 32]",
        *_train_args(synth_root, out, "--resume"),
    )
    assert not out.exists()


def test_resume_with_other_settings(synth_root, interrupted, capsys):
    out, _ = interrupted
    _assert_cli_error(
        capsys,
        "it was trained with lr=0.0005, this run asks for 0.001",
        *_train_args(synth_root, out, "--resume", "--lr", "1e-3"),
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "{tmp}/missing.jsonl"], "--data {tmp}/missing.jsonl does not exist"),
        (["--arch", "tinyy"], "unknown architecture 'tinyy'"),
        (["--objective", "clip", "--lambda-f", "2"], "--lambda-f does not apply to --objective clip (its options: none)"),
        (["--objective", "clip", "--fine-tokens", "unique"], "--fine-tokens does not apply to --objective clip"),
        (["--objective", "filip", "--lambda-images", "1"], "--lambda-images does not apply to --objective filip"),
        (
            ["--objective", "gloria", "--option", "tau9=1"],
            "--option tau9 does not apply to --objective gloria (its options: lambda_f, lambda_g, tau1, tau2, tau3)",
        ),
        (["--objective", "gloria", "--option", "tau2=0"], "--option tau2 must be a finite positive number, got 0"),
        (["--objective", "gloria", "--option", "tau1"], "--option 'tau1' must look like KEY=VALUE"),
        (["--objective", "mgca", "--option", "lambda_f=2"], "--option lambda_f: set it with --lambda-f"),
        (["--objective", "pacl", "--lambda-g", "-1"], "--lambda-g must be a finite number at least 0, got -1.0"),
        (
            ["--objective", "mgca", "--option", "proto_temperature=-0.2"],
            "--option proto_temperature must be a finite positive number, got -0.2",
        ),
        (["--text-attention", "sideways"], "--text-attention must be one of causal, bidirectional, got 'sideways'"),
        (["--fine-tokens", "nouns"], "unknown fine_tokens 'nouns'"),
        (["--objective", "clip", "--lambda-images", "1"], "--lambda-images does not apply to --objective clip"),
        (["--lambda-images", "-1"], "--lambda-images must be a finite number at least 0, got -1.0"),
        (["--objective", "filipp"], "unknown objective 'filipp'; known objectives: clip, filip, gloria, mgca, pacl, sparc"),
        (["--batch-size", "500"], "batch size 500 exceeds the 96 distinct images"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--objective", "gloria", "--option", "tau2=inf"], "--option tau2 must be a finite positive number, got inf"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--objective", "gloria", "--option", "tau1=abc"], "--option tau1 must be a number, got 'abc'"),
        (
            ["--objective", "mgca", "--option", "n_prototypes=1e9"],
            "--option n_prototypes must be a whole number, got 1000000000.0",
        ),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
        (["--softmax-weights", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_arguments(synth_root, tmp_path, capsys, args, needle):
    base = {"--data": str(synth_root), "--out": str(tmp_path / "out"), "--arch": "micro", "--steps": "2", "--batch-size": "8"}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for flag, value in base.items():
        if flag not in args:
            args += [flag, value]
    _assert_cli_error(capsys, needle.replace("{tmp}", str(tmp_path)), *args)
    assert not (tmp_path / "out").exists()


def test_errors_through_the_console_script(synth_root, tmp_path):
    (tmp_path / "out").mkdir()
    result = run_cli("train", "--data", synth_root, "--steps", 1, "--out", tmp_path / "out")
    assert_one_line_error(result, f"--out {tmp_path / 'out'} already exists")
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"image": "nowhere.png", "caption": "a red circle"}\n')
    assert_one_line_error(
        run_cli("train", "--data", bad, "--steps", 1, "--out", tmp_path / "o2"), "nowhere.png, which does not exist"
    )
    assert not (tmp_path / "o2").exists()


def test_a_non_finite_loss_stops_training_with_one_line_and_no_checkpoint(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    # A learning rate this large sends the weights to inf within two steps; the loss turns NaN.
    args = ["--data", synth_root, "--out", out, "--arch", "micro", "--steps", "6", "--batch-size", "8", "--warmup", "0"]
    _assert_cli_error(capsys, "the sparc loss is not finite", *args, "--lr", "1e30", "--grad-clip", "0")
    assert not out.exists()

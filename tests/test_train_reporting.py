"""Watching a long run: TensorBoard event files and W&B (offline) runs read back and compared with train_log.jsonl,
evaluation during training (ordinary records per step, metrics in the event file, the training itself unchanged),
under torchrun without deadlock, and one-line errors for the options."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from sparc_eval.cli import main
from sparc_eval.models.sparc import PRESETS
from sparc_eval.results.record import RECORD_SUFFIX
from sparc_eval.train.loop import TrainConfig, train

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
LOSS_KEYS = ("loss", "global", "fine", "fine_matched", "fine_mismatched", "align_nonzero", "logit_scale", "lr")


@pytest.fixture(autouse=True)
def micro_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", MICRO)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the TensorBoard event files under log_dir, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir / "tensorboard"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def test_tensorboard_event_file_holds_the_log_rows(synth_root, tmp_path):
    out = train(
        TrainConfig(
            data=str(synth_root), out=str(tmp_path / "run"), arch="micro", steps=4, batch_size=8, warmup=2, log_every=2,
            report_to=("tensorboard",),
        )
    )  # fmt: skip
    scalars = _scalars(tmp_path / "run.logs")
    rows = _rows(out)
    assert [r["step"] for r in rows] == [2, 4]
    for key in (*LOSS_KEYS, "samples_per_s"):
        assert sorted(scalars[f"train/{key}"]) == [2, 4], key
        for row in rows:  # event files hold float32
            assert scalars[f"train/{key}"][row["step"]] == pytest.approx(row[key], rel=1e-6), key


def _wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline W&B run, read from its .wandb file (leveldb log blocks of wandb's protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, chunks, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_log_rows(synth_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = train(
        TrainConfig(
            data=str(synth_root), out=str(tmp_path / "run"), arch="micro", steps=2, batch_size=8, warmup=1, log_every=1,
            report_to=("wandb",), log_dir=str(tmp_path / "logs"),
        )
    )  # fmt: skip
    history = _wandb_history(tmp_path / "logs")
    assert [h["_step"] for h in history] == [1, 2]
    for row, logged in zip(_rows(out), history):
        for key in LOSS_KEYS:
            assert logged[f"train/{key}"] == pytest.approx(row[key], rel=1e-12), key


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob(f"*{RECORD_SUFFIX}"))]


@pytest.mark.slow
def test_evaluation_during_training(synth_root, synth_data_dir, tmp_path, capsys):
    common = ["train", "--data", synth_root, "--arch", "micro", "--steps", 4, "--batch-size", 8, "--warmup", 2, "--log-every", 1]
    code, err = _cli(capsys, *common, "--out", tmp_path / "plain")
    assert code == 0, err
    code, err = _cli(
        capsys, *common, "--out", tmp_path / "run", "--report-to", "tensorboard",
        "--eval-every", 2, "--eval-task", "synth-retrieval", "--eval-data-dir", synth_data_dir,
    )  # fmt: skip
    assert code == 0, err
    # Scoring the weights on the way changes nothing in the training (its random state is kept aside).
    assert [{k: r[k] for k in LOSS_KEYS} for r in _rows(tmp_path / "run")] == [
        {k: r[k] for k in LOSS_KEYS} for r in _rows(tmp_path / "plain")
    ]
    logs = tmp_path / "run.logs"
    records = _records(logs / "eval")
    assert len(records) == 2 and {r["task"]["name"] for r in records} == {"synth-retrieval"}
    assert len({r["checkpoint"]["sha256"] for r in records}) == 2  # one checkpoint per step
    assert not any((logs / "checkpoints").iterdir())  # the step checkpoints are removed once scored
    by_step = {int(Path(r["checkpoint"]["ref"]).name.removeprefix("step_")): r for r in records}
    assert sorted(by_step) == [2, 4]
    scalars = _scalars(logs)
    for step, record in by_step.items():
        for name, metric in record["metrics"].items():
            assert scalars[f"eval/synth-retrieval/{name}"][step] == pytest.approx(metric["value"], rel=1e-6)


def test_reporting_options_are_one_line_errors(synth_root, tmp_path, capsys, monkeypatch):
    import sys

    common = ["train", "--data", synth_root, "--arch", "micro", "--steps", 1, "--batch-size", 8, "--out", tmp_path / "run"]
    cases = [
        (["--report-to", "mlflow"], "--report-to must be one of tensorboard, wandb, got 'mlflow'"),
        (["--eval-every", 2], "--eval-every and --eval-task go together"),
        (["--eval-task", "synth-retrieval"], "--eval-every and --eval-task go together"),
        (["--eval-every", 2, "--eval-task", "no-such-task"], "no-such-task"),
        (["--eval-every", -1, "--eval-task", "synth-retrieval"], "--eval-every must be at least 0, got -1"),
    ]
    for extra, needle in cases:
        code, err = _cli(capsys, *common, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (extra, err)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    code, err = _cli(capsys, *common, "--report-to", "tensorboard")
    assert code == 2 and "pip install 'sparc-eval[tensorboard]'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.logs").exists()


# ------------------------------------------------------------------------------------------ under torchrun


def _worker(rank: int, world: int, port: int, kwargs: dict, eval_args: tuple) -> None:
    from sparc_eval.cli.train import _evaluation_during_training

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ["SPARC_EVAL_NO_PROGRESS"] = "1"
    torch.set_num_threads(1)
    PRESETS["micro"] = MICRO
    train(TrainConfig(**kwargs), evaluate=_evaluation_during_training(*eval_args))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_rank_zero_evaluates_while_the_others_wait(synth_root, synth_data_dir, tmp_path):
    """Two gloo processes with --eval-every: rank 0 scores alone, rank 1 waits at the barrier (no deadlock), each
    step's record is written once, and the losses still match the single-process run."""
    kwargs = dict(
        data=str(synth_root), arch="micro", steps=4, batch_size=8, warmup=1, log_every=1, lr=2e-3, device="cpu", eval_every=2
    )
    single = train(TrainConfig(out=str(tmp_path / "single"), **{**kwargs, "eval_every": 0}))
    out = tmp_path / "ddp"
    eval_args = (2, ["synth-retrieval"], out, None, synth_data_dir, 16, "cpu", 0)
    mp.spawn(_worker, args=(2, _free_port(), {**kwargs, "out": str(out)}, eval_args), nprocs=2, join=True)
    for a, b in zip(_rows(single), _rows(out)):
        for key in ("loss", "global", "fine", "fine_matched", "logit_scale"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    records = _records(tmp_path / "ddp.logs" / "eval")
    assert len(records) == 2 and all(r["world_size"] == 1 and r["n_samples"] == 16 for r in records)


def test_a_wandb_run_that_cannot_start_is_one_line_and_leaves_nothing(synth_root, tmp_path, capsys, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def no_key(**_):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    out = tmp_path / "run"
    args = ["train", "--data", synth_root, "--out", out, "--arch", "micro", "--steps", 2, "--batch-size", 8]
    code, err = _cli(capsys, *args, "--report-to", "tensorboard", "--report-to", "wandb")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (
        "error: --report-to wandb could not start a run (No API key configured. Use `wandb login` to log in.); "
        "run `wandb login`, or set WANDB_MODE=offline"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the checkpoint nor its log folder

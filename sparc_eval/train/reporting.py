"""Watching a long run: scalars to TensorBoard or Weights & Biases, through each library's own writer.

`--report-to tensorboard` writes event files with torch.utils.tensorboard.SummaryWriter into LOG_DIR/tensorboard;
`--report-to wandb` logs with wandb.log into a run under LOG_DIR/wandb (online, or offline with WANDB_MODE=offline;
the run id is fixed by the output folder, so a resumed run continues the same W&B run). Both get, every
--log-every steps, the row the trainer writes to train_log.jsonl under `train/` (the loss parts, learning rate,
samples/s, fine-grained loss on matched and on mismatched pairs, logit scale) and, every --eval-every steps, the
metrics of the evaluation tasks under `eval/TASK/METRIC`. Each is an optional extra, checked before any work.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from sparc_eval.errors import SparcEvalError

# {--report-to value: (import name, sparc-eval extra that installs it)}
REPORTERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class TensorBoardReporter:
    def __init__(self, log_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events an interrupted run logged after its last checkpoint.
        self.writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"), purge_step=start_step or None)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, log_dir: Path, run_name: str, config: dict[str, Any]):
        import wandb

        (log_dir / "wandb").mkdir(parents=True, exist_ok=True)
        run_id = hashlib.sha256(str(Path(run_name).absolute()).encode()).hexdigest()[:16]
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "sparc-eval"),
                name=Path(run_name).name,
                id=run_id,
                resume="allow",
                dir=str(log_dir),
                config=config,
            )
        except Exception as exc:  # wandb's own errors (no API key, no network) share no public base class
            reason = " ".join(str(exc).split())
            raise SparcEvalError(
                f"--report-to wandb could not start a run ({reason}); run `wandb login`, or set WANDB_MODE=offline"
            ) from None

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def make_reporters(kinds: tuple[str, ...], log_dir: Path, *, out: str, start_step: int, config: dict[str, Any]) -> list[Any]:
    reporters: list[Any] = []
    created = not log_dir.exists()
    try:
        for kind in dict.fromkeys(kinds):
            log_dir.mkdir(parents=True, exist_ok=True)
            if kind == "tensorboard":
                reporters.append(TensorBoardReporter(log_dir, start_step))
            elif kind == "wandb":
                reporters.append(WandbReporter(log_dir, out, config))
    except SparcEvalError:
        for reporter in reporters:
            reporter.close()
        if created:  # a run that never started leaves no log folder behind
            shutil.rmtree(log_dir, ignore_errors=True)
        raise
    return reporters


def scalars(row: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a log row (or of evaluation metrics) as `prefix/name` scalars; the step itself is the x axis."""
    return {
        f"{prefix}/{name}": float(value)
        for name, value in row.items()
        if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }

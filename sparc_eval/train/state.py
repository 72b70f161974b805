"""Resumable training state without pickle: tensors in train_state.safetensors, the rest in train_state.json.

Holds the optimizer (AdamW moments and step counts; param groups), the learning-rate schedule position
and the torch RNG states. Model weights live beside them as an ordinary checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import write_json_atomic
from sparc_eval.models.checkpoint import read_safetensors

TENSORS_FILE = "train_state.safetensors"
JSON_FILE = "train_state.json"


def save_train_state(folder: Path, optimizer: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    """Write the optimizer, RNG states and `info` (step, schedule, ...) into `folder`."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    save_file(tensors, str(folder / TENSORS_FILE))
    write_json_atomic(folder / JSON_FILE, {**info, "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars}})


def _check_info(path: Path, info: Any, steps: int | None) -> None:
    """The saved info must name a step inside the run (and the step its folder is named after) and hold the
    optimizer's param groups and scalars: an edited or truncated state is one line, never a mislabelled checkpoint."""
    if not isinstance(info, dict):
        raise SparcEvalError(f"training state {path} is not a JSON object")
    step = info.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise SparcEvalError(f"training state {path} has step {step!r}, not a positive integer")
    if steps is not None and step >= steps:
        raise SparcEvalError(f"training state {path} is at step {step}, not before this run's last step ({steps})")
    named = re.fullmatch(r"step_(\d+)", path.parent.name)
    if named and int(named.group(1)) != step:
        raise SparcEvalError(f"training state {path} says step {step} but its folder is {path.parent.name}")
    optimizer = info.get("optimizer")
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("param_groups"), list)
        or not isinstance(optimizer.get("scalars"), dict)
        or not all(isinstance(k, str) and k.isdigit() and isinstance(v, dict) for k, v in optimizer["scalars"].items())
    ):
        raise SparcEvalError(f"training state {path} has no readable optimizer state (param_groups and scalars)")


def load_train_state(folder: Path, optimizer: torch.optim.Optimizer, *, steps: int | None = None) -> dict[str, Any]:
    """Restore the optimizer and RNG states saved in `folder`; return the saved info. With `steps` (the run's
    --steps), a state at or beyond the last step is refused."""
    path = folder / JSON_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparcEvalError(f"training state {path} does not read ({exc})") from None
    _check_info(path, info, steps)
    tensors = read_safetensors(folder / TENSORS_FILE)
    if not isinstance(tensors.get("rng.torch_cpu"), torch.Tensor) or tensors["rng.torch_cpu"].dtype != torch.uint8:
        raise SparcEvalError(f"training state {folder / TENSORS_FILE} has no CPU random-number state")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "optimizer":
            index, _, name = rest.partition(".")
            if not index.isdigit() or not name:
                raise SparcEvalError(f"training state {folder / TENSORS_FILE} has an unexpected tensor {key!r}")
            state.setdefault(int(index), {})[name] = value
    for index, entries in info["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise SparcEvalError(f"training state in {folder} does not fit this model's optimizer ({exc})") from None
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    return info

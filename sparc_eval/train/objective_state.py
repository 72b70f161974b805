"""An objective's own training state (MGCA's prototypes and step count), saved beside the checkpoint's weights.

Parts that the evaluated model uses belong to the model and its weights file (PACL's embedder: the objective's
MODEL_CONFIG); what only training uses belongs to the objective and lives in objective.safetensors, which
--resume reads and model loaders never do. Objectives without state (CLIP, SPARC, FILIP, PACL, GLoRIA) write
no file.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.checkpoint import FORMAT, read_safetensors

OBJECTIVE_FILE = "objective.safetensors"


def write_objective_state(folder: str | os.PathLike, objective: nn.Module) -> None:
    """Write objective.safetensors into an existing folder when the objective has state; nothing otherwise."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}
    if tensors:
        save_file(tensors, str(Path(folder) / OBJECTIVE_FILE), metadata={"format": FORMAT})


def load_objective_state(objective: nn.Module, folder: str | os.PathLike) -> None:
    """Restore an objective's state from checkpoint `folder` (a resumed run); an objective without state reads nothing."""
    expected = objective.state_dict()
    if not expected:
        return
    path = Path(folder) / OBJECTIVE_FILE
    tensors = read_safetensors(path)
    if set(tensors) != set(expected) or any(tuple(tensors[k].shape) != tuple(v.shape) for k, v in expected.items()):
        raise SparcEvalError(f"{path} does not hold the state of objective {getattr(objective, 'name', '?')!r} as configured")
    objective.load_state_dict({k: v.to(expected[k].device) for k, v in tensors.items()}, strict=True)

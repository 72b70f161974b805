"""sparc-eval: train SPARC / CLIP-style image-text models and score them on the SPARC paper's tasks."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "load_model"]


def load_model(ref: str, **kwargs: Any):
    """Resolve a checkpoint reference into a model that satisfies the model contract."""
    from sparc_eval.models.loaders import load_model as _load_model

    return _load_model(ref, **kwargs)


def evaluate(ckpt: str, task: str, **overrides: Any):
    """Score checkpoint `ckpt` on task card `task` (a name or a path); returns the result record."""
    from sparc_eval.evaluation import evaluate as _evaluate

    return _evaluate(ckpt, task, **overrides)

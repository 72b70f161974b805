"""Checkpoint cards: named, reproducible training recipes in `checkpoints/*.yaml`, loadable as `card:NAME`
or by path (`--ckpt checkpoints/tiny-sparc.yaml`).

It sits at the top of the package, beside `evaluate`, because it joins training (`train`) and model loading.

A card names the SynthScenes tree to train on and the trainer's settings. Loading `card:tiny-sparc`
(or `card:path/to/card.yaml`) trains the checkpoint the first time, into
`<checkpoint root>/<recipe sha256[:12]>/<name>/`, and loads that folder every time after. The folder
is keyed by the recipe's hash (data + training settings, not the description or version), so an edited
recipe trains a new checkpoint instead of silently reusing a stale one; the folder's own name is the
card's name, which is the name result tables show.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from sparc_eval.builtin import builtin_dir
from sparc_eval.data.synth import ensure_synthscenes
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import read_yaml_card, sha256_text
from sparc_eval.models.checkpoint import CONFIG_FILE, load_checkpoint

# Cards shipped with sparc-eval.
CARD_DIR = builtin_dir("checkpoints")
# Where `card:` references put what they train, and where they find SynthScenes (as `--data-dir`).
CHECKPOINT_ROOT_ENV, DEFAULT_CHECKPOINT_ROOT = "SPARC_EVAL_CHECKPOINTS", Path("runs/checkpoints")
DATA_DIR_ENV, DEFAULT_DATA_DIR = "SPARC_EVAL_DATA", Path("data")

_CARD_KEYS = {"name", "version", "description", "synthscenes", "train"}
_REQUIRED_KEYS = {"name", "version", "train"}
_SYNTH_KEYS = {"seed": 0, "n_train": 4000, "n_val": 500, "image_size": 64}
# TrainConfig fields that say where and how to run, not what to train: never part of a recipe.
_RUN_LEVEL_KEYS = {"data", "out", "resume", "device", "save_every"}


def _recipe_fields() -> dict[str, dataclasses.Field]:
    from sparc_eval.train.loop import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in _RUN_LEVEL_KEYS}


@dataclass(frozen=True)
class CheckpointCard:
    name: str
    version: int
    description: str
    synthscenes: dict[str, int]
    train: dict[str, Any]
    path: Path

    @property
    def synth_params(self) -> dict[str, int]:
        return self.synthscenes

    @property
    def recipe_sha256(self) -> str:
        return sha256_text(json.dumps({"synthscenes": self.synthscenes, "train": self.train}, sort_keys=True))

    def checkpoint_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.recipe_sha256[:12] / self.name

    def with_overrides(self, synthscenes: dict[str, int] | None = None, train: dict[str, Any] | None = None) -> CheckpointCard:
        """A variant of the recipe (e.g. quickstart --fast: tiny data, few steps), validated like the card itself."""
        merged_synth = _synth(self.path, {**self.synthscenes, **(synthscenes or {})})
        merged_train = _train(self.path, {**self.train, **(train or {})})
        return dataclasses.replace(self, synthscenes=merged_synth, train=merged_train)


def find_checkpoint_card(ref: str | os.PathLike) -> Path:
    """A card given by path (ending in .yaml/.yml) or by name (a file in checkpoints/)."""
    ref = str(ref)
    if ref.endswith((".yaml", ".yml")):
        if not Path(ref).is_file():
            raise SparcEvalError(f"checkpoint card {ref} does not exist")
        return Path(ref)
    for suffix in (".yaml", ".yml"):
        if (CARD_DIR / f"{ref}{suffix}").is_file():
            return CARD_DIR / f"{ref}{suffix}"
    known = ", ".join(sorted(p.stem for p in CARD_DIR.glob("*.y*ml"))) or "none"
    raise SparcEvalError(f"unknown checkpoint card {ref!r}; known cards: {known}")


def load_checkpoint_card(ref: str | os.PathLike) -> CheckpointCard:
    path = find_checkpoint_card(ref)
    raw = read_yaml_card(path, "checkpoint card", _CARD_KEYS, _REQUIRED_KEYS)
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool):
        raise SparcEvalError(f"checkpoint card {path}: 'version' must be an integer, got {raw['version']!r}")
    return CheckpointCard(
        name=str(raw["name"]),
        version=raw["version"],
        description=str(raw.get("description", "")),
        synthscenes=_synth(path, {**_SYNTH_KEYS, **(raw.get("synthscenes") or {})}),
        train=_train(path, raw["train"]),
        path=path,
    )


def _synth(path: Path, raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict) or set(raw) - set(_SYNTH_KEYS):
        raise SparcEvalError(f"checkpoint card {path}: 'synthscenes' takes only {', '.join(_SYNTH_KEYS)}")
    for key, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
            raise SparcEvalError(f"checkpoint card {path}: synthscenes {key!r} must be a positive integer, got {value!r}")
    return dict(raw)


def _train(path: Path, raw: Any) -> dict[str, Any]:
    """The trainer settings, checked against TrainConfig's fields and their default values' types."""
    if not isinstance(raw, dict):
        raise SparcEvalError(f"checkpoint card {path}: 'train' must be a mapping of trainer settings")
    fields = _recipe_fields()
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SparcEvalError(f"checkpoint card {path}: unknown train key {unknown[0]!r} (allowed: {', '.join(sorted(fields))})")
    for key, value in raw.items():
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else fields[key].default
        expected = (int, float) if isinstance(default, float) else type(default)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
            raise SparcEvalError(f"checkpoint card {path}: train {key!r} has value {value!r}, expected {type(default).__name__}")
    return dict(raw)


def ensure_checkpoint(
    card: CheckpointCard, *, root: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> Path:
    """The checkpoint folder of `card`: trained now (SynthScenes generated first if missing) or reused."""
    folder = card.checkpoint_dir(root if root is not None else os.environ.get(CHECKPOINT_ROOT_ENV, DEFAULT_CHECKPOINT_ROOT))
    if (folder / CONFIG_FILE).is_file():
        return folder
    from sparc_eval.train.loop import TrainConfig, train

    data = ensure_synthscenes(
        data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR), **card.synth_params
    )
    return train(TrainConfig(data=str(data), out=str(folder), **card.train))


def load_card_model(spec: str, *, trust_pickle: bool) -> nn.Module:
    """The `card:` model source: the checkpoint of a card, trained on first use."""
    card = load_checkpoint_card(spec)
    model = load_checkpoint(ensure_checkpoint(card))
    model.provenance["source"] = f"sparc-eval checkpoint from card {card.name} v{card.version} ({card.path})"
    return model

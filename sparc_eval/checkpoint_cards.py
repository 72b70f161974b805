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

from pydantic import Field
from torch import nn

from sparc_eval.builtin import builtin_dir
from sparc_eval.card_files import CHECKPOINT, find_card_file, is_path_ref, read_card
from sparc_eval.data.synth import ensure_synthscenes
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside, sha256_text
from sparc_eval.models.checkpoint import CONFIG_FILE, load_checkpoint
from sparc_eval.schema import Name, StrictModel, model_from_callable, model_from_dataclass, validate
from sparc_eval.tasks.card import SynthScenesSchema

# Cards shipped with sparc-eval.
CARD_DIR = builtin_dir("checkpoints")
# Where `card:` references put what they train, and where they find SynthScenes (as `--data-dir`).
CHECKPOINT_ROOT_ENV, DEFAULT_CHECKPOINT_ROOT = "SPARC_EVAL_CHECKPOINTS", Path("runs/checkpoints")
DATA_DIR_ENV, DEFAULT_DATA_DIR = "SPARC_EVAL_DATA", Path("data")

# TrainConfig fields that say where and how to run, not what to train: never part of a recipe.
_RUN_LEVEL_KEYS = frozenset({"data", "out", "resume", "device", "save_every"})


class CheckpointCardSchema(StrictModel):
    name: Name
    version: int = Field(ge=0)
    description: str = ""
    synthscenes: SynthScenesSchema = Field(default_factory=SynthScenesSchema)
    train: dict[str, Any]  # checked against the trainer's recipe fields (TrainConfig), the objective and the arch
    tags: list[Name] = Field(default_factory=list)


@dataclass(frozen=True)
class CheckpointCard:
    name: str
    version: int
    description: str
    synthscenes: dict[str, int]
    train: dict[str, Any]
    path: Path
    tags: tuple[str, ...] = ()

    @property
    def synth_params(self) -> dict[str, int]:
        return self.synthscenes

    @property
    def recipe_sha256(self) -> str:
        return sha256_text(json.dumps({"synthscenes": self.synthscenes, "train": self.train}, sort_keys=True))

    def checkpoint_dir(self, root: str | os.PathLike) -> Path:
        """`ROOT/<recipe sha256[:12]>/<name>`; a name that would lead outside the checkpoint root is refused."""
        if Path(root).exists() and not Path(root).is_dir():
            raise SparcEvalError(f"checkpoint root {root} is a file, not a folder")
        return inside(Path(root) / self.recipe_sha256[:12], self.name, f"checkpoint card {self.path}: name")

    def with_overrides(self, synthscenes: dict[str, int] | None = None, train: dict[str, Any] | None = None) -> CheckpointCard:
        """A variant of the recipe (e.g. quickstart --fast: tiny data, few steps), validated like the card itself."""
        where = f"checkpoint card {self.path}"
        merged_synth = validate(SynthScenesSchema, {**self.synthscenes, **(synthscenes or {})}, where, "synthscenes key")
        merged_train = {**self.train, **(train or {})}
        validate_recipe(merged_train, where)
        return dataclasses.replace(self, synthscenes=merged_synth.model_dump(), train=merged_train)


def find_checkpoint_card(ref: str | os.PathLike) -> Path:
    """A card given by path (ending in .yaml/.yml) or by name (the card folders, then checkpoints/)."""
    return find_card_file(ref, CHECKPOINT)


def validate_recipe(train: dict[str, Any], where: str) -> None:
    """The `train` mapping of a checkpoint card: TrainConfig's recipe fields (types, then the trainer's own range
    checks), an architecture that exists, an objective that exists with options its constructor takes."""
    from sparc_eval.models.objectives import OBJECTIVES, build_objective
    from sparc_eval.models.sparc import resolve_config
    from sparc_eval.train.loop import TrainConfig

    validate(model_from_dataclass(TrainConfig, exclude=_RUN_LEVEL_KEYS), train, where, "train key")
    config = TrainConfig(data="", out="", **train)
    checks = (
        ("train: ", config.validate),
        ("train key 'arch': ", lambda: resolve_config(config.arch)),
        ("train key 'objective': ", lambda: OBJECTIVES.get(config.objective)),
    )
    for label, check in checks:
        try:
            check()
        except SparcEvalError as exc:
            raise SparcEvalError(f"{where}: {label}{exc}") from None
    objective = OBJECTIVES.get(config.objective)
    validate(model_from_callable(objective, "objective_options"), config.objective_options, where, "train objective_options key")
    try:
        build_objective(config.objective, **config.objective_options)
    except SparcEvalError as exc:
        raise SparcEvalError(f"{where}: train key 'objective_options': {exc}") from None


def load_checkpoint_card(ref: str | os.PathLike) -> CheckpointCard:
    """Read and validate a checkpoint card completely (CheckpointCardSchema, then validate_recipe)."""
    path = find_checkpoint_card(ref)
    _, raw = read_card(path, CHECKPOINT)
    where = f"checkpoint card {path}"
    schema = validate(CheckpointCardSchema, raw, where)
    assert isinstance(schema, CheckpointCardSchema)
    if not is_path_ref(ref) and schema.name != path.stem:
        raise SparcEvalError(f"{where}: its name {schema.name!r} differs from its file name; a card found by name carries it")
    validate_recipe(schema.train, where)
    return CheckpointCard(
        name=schema.name,
        version=schema.version,
        description=schema.description,
        synthscenes=schema.synthscenes.model_dump(),
        train=dict(schema.train),
        path=path,
        tags=tuple(schema.tags),
    )


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

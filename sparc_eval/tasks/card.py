"""Task cards: YAML files in `tasks/` that say what to evaluate, validated strictly on load.

A card names a runner kind, the dataset it reads (format + root + split + the format's own options)
and the runner's parameters. Unknown or missing keys are errors naming the card and the key. The
card hash is taken over the parsed content, so comments and formatting do not change it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparc_eval.builtin import builtin_dir
from sparc_eval.data.synth import synthscenes_dir
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import read_yaml_card, sha256_text, write_text_atomic

# Cards shipped with the repository; SPARC_EVAL_TASKS adds more folders (os.pathsep-separated).
BUILTIN_CARD_DIR = builtin_dir("tasks")

_CARD_KEYS = {"name", "version", "runner", "description", "dataset", "fit_dataset", "params", "synthscenes"}
_REQUIRED_CARD_KEYS = {"name", "version", "runner", "dataset"}
_DATASET_FIXED_KEYS = {"format", "root", "split"}
# Generator parameters of the SynthScenes tree a card reads through the `{synthscenes}` root placeholder.
_SYNTH_DEFAULTS = {"seed": 0, "n_train": 4000, "n_val": 500, "image_size": 64}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a runner's data lives: a reader format, a root (may hold {data} / {synthscenes}), a split, reader options."""

    format: str
    root: str
    split: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskCard:
    name: str
    version: int
    runner: str
    description: str
    dataset: DatasetSpec
    fit_dataset: DatasetSpec | None
    params: dict[str, Any]
    synthscenes: dict[str, int] | None
    path: Path
    sha256: str

    @property
    def synth_params(self) -> dict[str, int]:
        return self.synthscenes or dict(_SYNTH_DEFAULTS)

    def synthscenes_dir(self, data_dir: Path) -> Path:
        """The folder of the SynthScenes tree this card reads, named by its generator parameters."""
        return synthscenes_dir(data_dir, **self.synth_params)


def card_search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("SPARC_EVAL_TASKS", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_CARD_DIR]


def find_card(ref: str | Path) -> Path:
    """A card given by path (anything ending in .yaml/.yml or an existing file) or by name."""
    ref_str = str(ref)
    if ref_str.endswith((".yaml", ".yml")) or Path(ref_str).is_file():
        path = Path(ref_str)
        if not path.is_file():
            raise SparcEvalError(f"task card {path} does not exist")
        return path
    for folder in card_search_dirs():
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{ref_str}{suffix}"
            if candidate.is_file():
                return candidate
    known = ", ".join(sorted(p.stem for p in list_card_paths()))
    raise SparcEvalError(f"unknown task {ref_str!r}; known tasks: {known}")


def list_card_paths() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in card_search_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.y*ml")):
                seen.setdefault(path.stem, path)
    return [seen[name] for name in sorted(seen)]


def _dataset_spec(raw: Any, where: str) -> DatasetSpec:
    if not isinstance(raw, dict):
        raise SparcEvalError(f"{where} must be a mapping with keys format, root, split")
    missing = _DATASET_FIXED_KEYS - raw.keys()
    if missing:
        raise SparcEvalError(f"{where} is missing key {sorted(missing)[0]!r}")
    options = {k: v for k, v in raw.items() if k not in _DATASET_FIXED_KEYS}
    return DatasetSpec(format=str(raw["format"]), root=str(raw["root"]), split=str(raw["split"]), options=options)


def load_card(ref: str | Path) -> TaskCard:
    """Read and validate the card's own keys; the runner validates `params` (see runner.validate_params)."""
    path = find_card(ref)
    raw = read_yaml_card(path, "task card", _CARD_KEYS, _REQUIRED_CARD_KEYS)
    if not isinstance(raw["version"], int):
        raise SparcEvalError(f"task card {path}: 'version' must be an integer, got {raw['version']!r}")
    synth = raw.get("synthscenes")
    if synth is not None:
        if not isinstance(synth, dict) or set(synth) - set(_SYNTH_DEFAULTS):
            raise SparcEvalError(f"task card {path}: 'synthscenes' takes only {', '.join(_SYNTH_DEFAULTS)}")
        synth = {**_SYNTH_DEFAULTS, **synth}
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise SparcEvalError(f"task card {path}: 'params' must be a mapping")
    return TaskCard(
        name=str(raw["name"]),
        version=raw["version"],
        runner=str(raw["runner"]),
        description=str(raw.get("description", "")),
        dataset=_dataset_spec(raw["dataset"], f"task card {path}: 'dataset'"),
        fit_dataset=_dataset_spec(raw["fit_dataset"], f"task card {path}: 'fit_dataset'") if raw.get("fit_dataset") else None,
        params=params,
        synthscenes=synth,
        path=path,
        sha256=sha256_text(json.dumps(raw, sort_keys=True, default=str)),
    )


def _type_ok(value: Any, annotation: Any) -> bool:
    """A loose check of YAML values against a dataclass field annotation (int accepted where float is)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item_type) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def validate_params(params_type: type, raw: dict[str, Any], card: TaskCard) -> Any:
    """Build the runner's Params dataclass from the card's `params`, naming the card and key on any error."""
    hints = typing.get_type_hints(params_type)
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SparcEvalError(
            f"task card {card.path}: unknown params key {unknown[0]!r} for runner {card.runner!r} "
            f"(allowed: {', '.join(sorted(fields))})"
        )
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if required and name not in raw:
            raise SparcEvalError(f"task card {card.path}: missing params key {name!r}")
        if name in raw and not _type_ok(raw[name], hints[name]):
            raise SparcEvalError(f"task card {card.path}: params key {name!r} has value {raw[name]!r}, expected {hints[name]}")
    return params_type(**raw)


def write_card_variant(
    source: Path, dest: Path, note: str, *, params: dict[str, Any] | None = None, synthscenes: dict[str, int] | None = None
) -> Path:
    """A copy of card `source` at `dest` with `note` as its first comment line, the given values replacing those of
    the params the card already has, and (when given) another SynthScenes tree. Its hash follows its new content."""
    import yaml

    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    if synthscenes is not None:
        raw["synthscenes"] = dict(synthscenes)
    card_params = raw.get("params") or {}
    raw["params"] = {**card_params, **{k: v for k, v in (params or {}).items() if k in card_params}}
    write_text_atomic(dest, f"# {note}\n" + yaml.safe_dump(raw, sort_keys=False))
    return dest

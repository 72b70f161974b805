"""Task cards: YAML files that say what to evaluate, validated completely when they are loaded (docs/cards.md).

A card names a runner kind, the dataset it reads (format + root + split + the format's own options)
and the runner's parameters. The card's own keys follow `TaskCardSchema`; the dataset options are
checked against the reader's keyword-only parameters and the params against the runner's `Params`
dataclass (sparc_eval.schema), and the runner's own cross-checks (`Runner.check`) run too, so a card
that loads is a card that can run. Every failure is one line naming the card and the key. The card
hash is taken over the parsed content without `tags`, so comments, formatting and tags do not change it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from sparc_eval.builtin import builtin_dir
from sparc_eval.card_files import TASK, find_card_file, is_path_ref, list_card_files, read_card
from sparc_eval.data.synth import synthscenes_dir
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_text, write_text_atomic
from sparc_eval.schema import Name, NonEmpty, Seed, Split, StrictModel, build_dataclass, validate

BUILTIN_CARD_DIR = builtin_dir("tasks")
# Keys left out of the card hash: they describe or group a card, they do not change its numbers.
UNHASHED_KEYS = ("tags",)


class SynthScenesSchema(StrictModel):
    """Generator parameters of a SynthScenes tree (read through the `{synthscenes}` root placeholder)."""

    seed: Seed = 0
    n_train: Annotated[int, Field(ge=1, le=10_000_000)] = 4000
    n_val: Annotated[int, Field(ge=1, le=10_000_000)] = 500
    image_size: Annotated[int, Field(ge=16, le=4096)] = 64


class DatasetSchema(StrictModel, extra="allow"):
    """format, root, split; every other key is an option of the format's reader (checked against the reader)."""

    format: NonEmpty
    root: NonEmpty
    split: Split


class TaskCardSchema(StrictModel):
    name: Name
    version: Annotated[int, Field(ge=0)]
    runner: NonEmpty
    description: str = ""
    dataset: DatasetSchema
    fit_dataset: DatasetSchema | None = None
    params: dict[str, Any] | None = None  # checked against the runner's Params
    synthscenes: SynthScenesSchema | None = None
    tags: list[Name] = Field(default_factory=list)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a runner's data lives: a reader format, a root (may hold {data} / {synthscenes}), a split, reader options."""

    format: str
    root: str
    split: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TaskCard:
    name: str
    version: int
    runner: str
    description: str
    dataset: DatasetSpec
    fit_dataset: DatasetSpec | None
    params: dict[str, Any]  # as the card writes them
    synthscenes: dict[str, int] | None
    path: Path
    sha256: str
    tags: tuple[str, ...] = ()
    runner_params: Any = None  # the runner's Params, validated, defaults filled in

    @property
    def synth_params(self) -> dict[str, int]:
        return self.synthscenes or SynthScenesSchema().model_dump()

    def synthscenes_dir(self, data_dir: Path) -> Path:
        """The folder of the SynthScenes tree this card reads, named by its generator parameters."""
        return synthscenes_dir(data_dir, **self.synth_params)


def card_search_dirs() -> list[Path]:
    """Folders searched for task cards by name, in order (card_files: --cards, SPARC_EVAL_CARDS, built-in)."""
    from sparc_eval.card_files import search_dirs

    return search_dirs(TASK)


def find_card(ref: str | os.PathLike) -> Path:
    """A card given by path (ending in .yaml/.yml) or by name (card_files)."""
    return find_card_file(ref, TASK)


def list_card_paths() -> list[Path]:
    return list_card_files(TASK)


def validate_params(params_type: type, raw: dict[str, Any] | None, card: TaskCard | str) -> Any:
    """The runner's Params dataclass built from `raw` (a card's `params`, or a record's), validated strictly;
    `card` (or a description of the source) names the file in the one-line error."""
    where = f"task card {card.path}" if isinstance(card, TaskCard) else card
    return build_dataclass(params_type, raw, where, "params key")


def _dataset_spec(schema: DatasetSchema, where: str) -> DatasetSpec:
    from sparc_eval.data.registry import READERS, check_reader_options

    options = dict(schema.model_extra or {})
    try:
        reader = READERS.get(schema.format, f"{where}: ")
    except SparcEvalError as exc:
        raise SparcEvalError(_naming(str(exc), where)) from None
    check_reader_options(reader, options, where)
    return DatasetSpec(format=schema.format, root=schema.root, split=schema.split, options=options)


def _naming(message: str, where: str) -> str:
    """`message` prefixed with `where` unless it already names it (a plugin's import failure names only the plugin)."""
    return message if message.startswith(where) else f"{where}: {message}"


def card_sha256(raw: dict[str, Any]) -> str:
    """The hash of a card's content: its parsed keys without UNHASHED_KEYS, key order and formatting ignored."""
    hashed = {k: v for k, v in raw.items() if k not in UNHASHED_KEYS}
    return sha256_text(json.dumps(hashed, sort_keys=True, default=str))


def load_card(ref: str | os.PathLike) -> TaskCard:
    """Read and validate a task card completely: its keys, its reader options, its runner's params and checks."""
    from sparc_eval.tasks.runner import get_runner

    path = find_card(ref)
    _, raw = read_card(path, TASK)
    where = f"task card {path}"
    schema = validate(TaskCardSchema, raw, where)
    assert isinstance(schema, TaskCardSchema)
    if not is_path_ref(ref) and schema.name != path.stem:
        raise SparcEvalError(f"{where}: its name {schema.name!r} differs from its file name; a card found by name carries it")
    try:
        runner_cls = get_runner(schema.runner, path)
    except SparcEvalError as exc:
        raise SparcEvalError(_naming(str(exc), where)) from None
    card = TaskCard(
        name=schema.name,
        version=schema.version,
        runner=schema.runner,
        description=schema.description,
        dataset=_dataset_spec(schema.dataset, f"{where}: dataset"),
        fit_dataset=_dataset_spec(schema.fit_dataset, f"{where}: fit_dataset") if schema.fit_dataset else None,
        params=dict(schema.params or {}),
        synthscenes=schema.synthscenes.model_dump() if schema.synthscenes else None,
        path=path,
        sha256=card_sha256(raw),
        tags=tuple(schema.tags),
    )
    params = validate_params(runner_cls.Params, card.params, card)
    runner_cls.check(card, params)
    return dataclasses.replace(card, runner_params=params)


def write_card_variant(
    source: Path, dest: Path, note: str, *, params: dict[str, Any] | None = None, synthscenes: dict[str, int] | None = None
) -> Path:
    """A copy of card `source` at `dest` with `note` as its first comment line, the given params set (replacing or
    adding; the copy is validated like any card when it is loaded), and (when given) another SynthScenes tree. Its
    hash follows its new content."""
    import yaml

    _, raw = read_card(source, TASK)
    if synthscenes is not None:
        raw["synthscenes"] = dict(synthscenes)
    card_params = raw.get("params") or {}
    raw["params"] = {**card_params, **(params or {})}
    write_text_atomic(dest, f"# {note}\n" + yaml.safe_dump(raw, sort_keys=False))
    return dest

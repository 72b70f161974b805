"""Where cards are found: built-in card folders, the user's card folders, cards given by path.

Both kinds of card (task cards, checkpoint cards) are found the same way. A reference ending in `.yaml` or
`.yml` is a path and always works. Anything else is a card name (an identifier, schema.NAME_PATTERN, never a
path) looked up as `NAME.yaml` / `NAME.yml` in the user's card folders first (`--cards DIR`, then the
`SPARC_EVAL_CARDS` environment variable, os.pathsep-separated, in order), then in the built-in folder of the
kind (`tasks/`, `checkpoints/`). A user folder may hold both kinds; a card's kind is read from its keys
(`runner:` makes a task card, `train:` a checkpoint card). A card found by name must carry that name.
This module is a leaf: it imports nothing of ours but errors, fileio, schema and builtin.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sparc_eval.builtin import builtin_dir
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside, read_yaml_mapping
from sparc_eval.schema import NAME_PATTERN, is_name

CARDS_ENV = "SPARC_EVAL_CARDS"
TASK, CHECKPOINT = "task card", "checkpoint card"
SUFFIXES = (".yaml", ".yml")
# The key that only a card of each kind has.
_KIND_KEY = {TASK: "runner", CHECKPOINT: "train"}
_BUILTIN = {TASK: "tasks", CHECKPOINT: "checkpoints"}


def user_card_dirs() -> list[Path]:
    """The user's card folders, in search order."""
    return [Path(p) for p in os.environ.get(CARDS_ENV, "").split(os.pathsep) if p]


def use_card_dirs(dirs: Iterable[str | os.PathLike]) -> None:
    """Put `dirs` (the CLI's --cards, in order) before the folders already searched; each must be a folder.
    Through the environment, so that processes this one starts (distributed training) search them too."""
    dirs = [Path(d) for d in dirs]
    for folder in dirs:
        if not folder.is_dir():
            raise SparcEvalError(f"card folder {folder} (--cards) is not a folder")
    if dirs:
        os.environ[CARDS_ENV] = os.pathsep.join(str(p) for p in [*dirs, *user_card_dirs()])


def search_dirs(kind: str) -> list[Path]:
    return [*user_card_dirs(), builtin_dir(_BUILTIN[kind])]


def is_path_ref(ref: str | os.PathLike) -> bool:
    return str(ref).endswith(SUFFIXES)


def card_kind(raw: dict[str, Any], path: Path) -> str:
    """TASK or CHECKPOINT, from the keys only one kind has."""
    kinds = [kind for kind, key in _KIND_KEY.items() if key in raw]
    if len(kinds) != 1:
        raise SparcEvalError(
            f"card {path} is neither a task card (it has key 'runner') nor a checkpoint card (it has key 'train')"
            if not kinds
            else f"card {path} has both 'runner' (task cards) and 'train' (checkpoint cards)"
        )
    return kinds[0]


def read_card(path: Path, kind: str | None = None) -> tuple[str, dict[str, Any]]:
    """(kind, top-level mapping) of the card file `path`, bounded (fileio.read_yaml_mapping); when `kind` is given,
    a card of the other kind is an error naming the file."""
    raw = read_yaml_mapping(path, kind or "card")
    if kind is None:
        return card_kind(raw, path), raw
    other = CHECKPOINT if kind == TASK else TASK
    if _KIND_KEY[other] in raw and _KIND_KEY[kind] not in raw:
        raise SparcEvalError(f"{path} is a {other}, not a {kind}")
    return kind, raw  # a card missing its kind's key is reported as such by its schema


def _holds(path: Path, kind: str) -> bool:
    """Whether card file `path` in a user folder is a card of `kind` (a broken file is an error naming it)."""
    return card_kind(read_yaml_mapping(path, "card"), path) == kind


def find_card_file(ref: str | os.PathLike, kind: str) -> Path:
    """The file of card `ref` of `kind`: a path (ending in .yaml/.yml) or a name in the card folders."""
    ref = str(ref)
    if is_path_ref(ref):
        path = Path(ref)
        if not path.is_file():
            raise SparcEvalError(f"{kind} {path} does not exist")
        return path
    if not is_name(ref):
        raise SparcEvalError(
            f"{kind} {ref!r} is neither a card name ({NAME_PATTERN}, no '..') nor a path ending in .yaml or .yml"
        )
    for folder in search_dirs(kind):
        for suffix in SUFFIXES:
            candidate = inside(folder, f"{ref}{suffix}", f"{kind} name")  # a name never leads out of its card folder
            if candidate.is_file() and _holds(candidate, kind):
                return candidate
    known = ", ".join(sorted(p.stem for p in list_card_files(kind))) or "none"
    raise SparcEvalError(f"unknown {kind.split()[0]} {ref!r}; known {kind}s: {known}")


def list_card_files(kind: str | None = None) -> list[Path]:
    """Every card file of `kind` (both kinds when None) in the search folders; a name found in an earlier folder
    hides the same name in later ones."""
    kinds = [kind] if kind else [TASK, CHECKPOINT]
    seen: dict[tuple[str, str], Path] = {}
    for k in kinds:
        for folder in search_dirs(k):
            if not folder.is_dir():
                continue
            for path in sorted(
                p for p in folder.iterdir() if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
            ):
                if (k, path.stem) in seen:
                    continue
                if folder in user_card_dirs() and not _holds(path, k):
                    continue
                seen[(k, path.stem)] = path
    return [seen[key] for key in sorted(seen)]

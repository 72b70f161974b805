"""One registry mechanism for everything sparc-eval can be extended with: runners, readers, loaders, objectives.

Each kind has one `Registry`, defined in the layer that uses it (runners in `tasks.runner`, readers in
`data.registry`, model loaders in `models.loaders`, objectives in `models.objectives`). Entries are lazy
references `"module:attribute"`, imported on first use, so listing or picking one never imports the
heavy libraries of the others. sparc-eval's own entries are the `builtins` table of each registry;
another installed package adds entries through the Python entry-point group of the kind, e.g. in its
pyproject.toml:

    [project.entry-points."sparc_eval.runners"]
    my-kind = "my_package.my_module:MyRunner"

The same `"module:attribute"` form serves both, so a plugin is exactly what a built-in would be.
A plugin may not take a built-in's name, and a plugin that fails to import is one error naming it.
This module is a leaf: it imports nothing of ours but the error type.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Generic, TypeVar

from sparc_eval.errors import SparcEvalError

T = TypeVar("T")

# Entry-point group of each kind; the names are part of the plugin interface (CONTRIBUTING.md).
ENTRY_POINT_GROUPS = {
    "runner": "sparc_eval.runners",
    "reader": "sparc_eval.readers",
    "loader": "sparc_eval.loaders",
    "objective": "sparc_eval.objectives",
}


@dataclass(frozen=True)
class Entry:
    """Where an entry comes from: its `module:attribute` reference and the distribution that declared it."""

    name: str
    target: str
    source: str  # "sparc-eval" for built-ins, else the plugin distribution's name


class Registry(Generic[T]):
    """Named, lazily imported entries of one kind (see the module doc)."""

    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        self.group = ENTRY_POINT_GROUPS[kind]
        self._builtins = {name: Entry(name, target, "sparc-eval") for name, target in builtins.items()}
        self._entries: dict[str, Entry] | None = None  # built-ins + plugins, found on first use
        self._loaded: dict[str, T] = {}

    def entries(self) -> dict[str, Entry]:
        """Every entry by name: the built-ins, then the plugins' entry points (read once per process)."""
        if self._entries is None:
            entries = dict(self._builtins)
            for ep in metadata.entry_points(group=self.group):
                dist = ep.dist.name if ep.dist is not None else "an unnamed distribution"
                if ep.name in self._builtins:
                    raise SparcEvalError(
                        f"plugin {dist}: {self.kind} {ep.name!r} (entry point group {self.group}) takes the name of a built-in {self.kind}"
                    )
                previous = entries.get(ep.name)
                if previous is not None and previous.target != ep.value:
                    raise SparcEvalError(
                        f"plugins {previous.source} and {dist} both register {self.kind} {ep.name!r} (entry point group {self.group})"
                    )
                entries[ep.name] = Entry(ep.name, ep.value, dist)
            self._entries = entries
        return self._entries

    def names(self) -> list[str]:
        return sorted(self.entries())

    def __contains__(self, name: object) -> bool:
        return name in self.entries()

    def get(self, name: str, where: str = "") -> T:
        """The entry called `name`, imported now if it was not yet; `where` prefixes the error (e.g. the card)."""
        if name in self._loaded:
            return self._loaded[name]
        entry = self.entries().get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise SparcEvalError(f"{where}unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        self._loaded[name] = _import_target(entry, self.kind)
        return self._loaded[name]

    @contextlib.contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """`obj` under `name` for the duration of a with-block: for objects made at run time (tests, notebooks)."""
        if name in self.entries():
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self.entries()[name] = Entry(name, f"<run time: {obj!r}>", "run time")
        self._loaded[name] = obj
        try:
            yield obj
        finally:
            del self.entries()[name], self._loaded[name]


def _import_target(entry: Entry, kind: str) -> object:
    module_name, _, attribute = entry.target.partition(":")
    owner = "sparc-eval" if entry.source == "sparc-eval" else f"plugin {entry.source}"
    try:
        module = importlib.import_module(module_name)
    except SparcEvalError:
        raise
    except Exception as exc:  # a plugin can fail in any way while importing; each is one line naming it
        if entry.source == "sparc-eval" and isinstance(exc, ModuleNotFoundError):
            raise  # a broken installation of sparc-eval itself is a bug, not a user error
        first = (str(exc).splitlines() or [""])[0]
        raise SparcEvalError(
            f"{owner}: {kind} {entry.name!r} ({entry.target}) failed to import: {type(exc).__name__}: {first}"
        ) from None
    obj: object = module
    for part in filter(None, attribute.split(".")):
        if not hasattr(obj, part):
            raise SparcEvalError(f"{owner}: {kind} {entry.name!r} ({entry.target}): {module_name} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj

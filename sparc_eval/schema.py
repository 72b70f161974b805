"""Strict validation shared by task cards, checkpoint cards, reader options, runner params and result records.

One schema library (pydantic v2) with one strictness everywhere: unknown keys are errors, types are not
coerced (`version: true`, `n_train: many` and `top_k: "5"` are refused; a bool is not an int; an int is
accepted where a float is expected), NaN and infinity are refused, and ranges are part of the schema. Every
failure becomes one SparcEvalError naming the file and the key (`one_line`).

Options declared by code are validated against that code: a reader's keyword-only parameters
(`model_from_callable`), a runner's `Params` dataclass (`model_from_dataclass`), an objective's constructor;
the annotations are the types. This module is a leaf: it imports nothing of ours but the error type.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from sparc_eval.errors import SparcEvalError

# A card name (task or checkpoint) and a tag: lower-case letters, digits, '.', '_' and '-', starting with a letter
# or digit, never '..' (so a name is never a path: no '/', no parent folder, no hidden file).
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
NAME_MAX_LENGTH = 100
# A dataset split (it becomes part of file names: `{split}` in an annotation path, `ROOT/SPLIT/` folders).
SPLIT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


def _identifier(pattern: str, what: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > NAME_MAX_LENGTH or not compiled.match(value) or ".." in value:
            raise ValueError(
                f"{what} {value!r} must match {pattern} (at most {NAME_MAX_LENGTH} characters, no '..'): a name, not a path"
            )
        return value

    return check


Name = Annotated[str, AfterValidator(_identifier(NAME_PATTERN, "name"))]


def is_name(value: str) -> bool:
    """Whether `value` is a valid card name or tag (NAME_PATTERN, no '..')."""
    return len(value) <= NAME_MAX_LENGTH and re.match(NAME_PATTERN, value) is not None and ".." not in value


Split = Annotated[str, AfterValidator(_identifier(SPLIT_PATTERN, "split"))]
NonEmpty = Annotated[str, Field(min_length=1)]
# numpy's legacy seeding (np.random.seed) takes [0, 2**32): the seed range of every card, record and command.
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class StrictModel(BaseModel):
    """Base of every schema: unknown keys, coercion, NaN and inf are errors."""

    model_config = STRICT


# ------------------------------------------------------------------------------------------ error lines


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The keys the (nested) model at `loc` takes, for an 'unknown key' message; None when not a model there."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return sorted(model.model_fields)


def one_line(exc: ValidationError, model: type[BaseModel] | None = None, label: str = "key") -> str:
    """The first error of `exc` as one sentence naming the key: `unknown key 'x' (allowed: ...)`, `missing key 'x'`,
    or `key 'x' has value V: why`. `label` replaces the word "key" (e.g. "params key", "reader option")."""
    errors = exc.errors(include_url=False)
    # An unknown key first: it is usually a misspelt one, and then also the cause of a "missing key".
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if not loc:
        return f"{label}: {err['msg']}"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1]) if model is not None else None
        hint = f" (allowed: {', '.join(allowed) or 'none'})" if allowed is not None else ""
        return f"unknown {label} {key!r}{hint}"
    if err["type"] == "missing":
        return f"missing {label} {key!r}"
    message = err["msg"]
    if err["type"] in ("value_error", "assertion_error"):
        message = str(err.get("ctx", {}).get("error", message))
    return f"{label} {key!r} has value {_short(err.get('input'))}: {message}"


def validate(model: type[BaseModel], raw: Any, where: str, label: str = "key") -> BaseModel:
    """`model` validated from `raw`, or one SparcEvalError `WHERE: <one_line>`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SparcEvalError(f"{where}: {one_line(exc, model, label)}") from None


# ------------------------------------------------------------------------------ models built from code


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:  # an annotation that cannot be resolved (a plugin's forward reference): untyped
        return {}


def _lax_tuples(annotation: Any) -> Any:
    """YAML and JSON have lists, not tuples: a tuple annotation takes a list of the same shape."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return Annotated[annotation, Field(strict=False)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_lax_tuples(a) for a in typing.get_args(annotation))]  # noqa: UP007
    return annotation


def model_from_callable(
    func: Callable, name: str, skip: frozenset[str] = frozenset(), keyword_only: bool = False
) -> type[BaseModel]:
    """A strict model of the keyword arguments of `func` (a reader, an objective class): its parameters not in
    `skip` (only the keyword-only ones when `keyword_only`), typed by their annotations, required when they have
    no default. A `**kwargs` parameter lets unknown keys through (a plugin that takes free options)."""
    kinds = (
        (inspect.Parameter.KEYWORD_ONLY,)
        if keyword_only
        else (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    target = func.__init__ if isinstance(func, type) else func
    hints = _hints(target)
    fields: dict[str, Any] = {}
    extra = "forbid"
    for param in inspect.signature(func).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
        if param.name in skip or param.kind not in kinds:
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (_lax_tuples(hints.get(param.name, Any)), default)
    return create_model(name, __config__=ConfigDict(STRICT, extra=extra), **fields)


def model_from_dataclass(cls: type, exclude: frozenset[str] = frozenset()) -> type[BaseModel]:
    """A strict model of dataclass `cls`'s fields (a runner's Params, the trainer's recipe), defaults included."""
    hints = _hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (_lax_tuples(hints.get(f.name, Any)), default)
    return create_model(f"{cls.__name__}Schema", __config__=STRICT, **fields)


def build_dataclass(cls: type, raw: Any, where: str, label: str) -> Any:
    """An instance of dataclass `cls` from `raw`, validated strictly (model_from_dataclass); a ValueError or
    SparcEvalError its __post_init__ raises (cross-field ranges) is one line too."""
    model = model_from_dataclass(cls)
    validated = validate(model, raw if raw is not None else {}, where, label)
    values = {name: getattr(validated, name) for name in type(validated).model_fields}
    try:
        return cls(**values)
    except (ValueError, SparcEvalError) as exc:
        raise SparcEvalError(f"{where}: {exc}") from None

"""sparc-eval checkpoints: a folder holding `model.safetensors` and `config.json`, written atomically.

config.json records everything needed to rebuild and to trust the model: the full model config
(architecture, every open_clip tower field, tokenizer, preprocessing), plus whatever the writer adds
(objective and its weights, training steps and seed, data manifest hash, git revision, package versions).
Weights are safetensors only, so reading a checkpoint never executes code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file, temporary_sibling, write_error, write_json_atomic

FORMAT = "sparc-eval-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it onto `path` only if the block succeeds.

    `path` must not exist yet: a folder cannot be renamed over a non-empty one, and a checkpoint is
    never half-replaced. A failure leaves nothing behind, and a killed run's temporary folder is removed by
    the next write of the same checkpoint.
    """
    path = Path(path)
    if path.exists():
        raise SparcEvalError(f"{path} already exists; choose another output folder or remove it")
    tmp = temporary_sibling(path, folder=True)  # also removes the temporary folders of runs that were killed
    try:
        yield tmp
        _default_permissions(tmp)
        os.rename(tmp, path)
    except OSError as exc:  # a full disk or a permission, named by the folder asked for, not its temporary
        raise write_error(path, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _default_permissions(folder: Path) -> None:
    """Temporary files and folders are private (0600/0700); a finished checkpoint gets the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for item in folder.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def write_checkpoint_files(folder: str | os.PathLike, model: nn.Module, **card: Any) -> None:
    """Write model.safetensors and config.json for `model` (a SparcModel) into an existing folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    config = dict(model.config)
    overrides = tower_overrides(config)
    if overrides:
        config["overrides"] = overrides
    write_json_atomic(folder / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config, **card})


def save_checkpoint(model: nn.Module, folder: str | os.PathLike, **card: Any) -> Path:
    """Write a checkpoint folder atomically; `card` entries (objective, training, data, ...) go into config.json."""
    with atomic_folder(folder) as tmp:
        write_checkpoint_files(tmp, model, **card)
    return Path(folder)


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The validated config.json of checkpoint folder `folder`."""
    folder = Path(folder)
    if not folder.exists():
        raise SparcEvalError(f"checkpoint {folder} does not exist")
    if not folder.is_dir():
        raise SparcEvalError(
            f"checkpoint {folder} is not a folder (a sparc-eval checkpoint holds {WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise SparcEvalError(f"checkpoint {folder} has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparcEvalError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise SparcEvalError(f'{path} is not a sparc-eval checkpoint config (no "format": "{FORMAT}")')
    if config.get("format_version") != FORMAT_VERSION:
        raise SparcEvalError(
            f"{path} has format_version {config.get('format_version')!r}; this sparc-eval reads {FORMAT_VERSION}"
        )
    if not isinstance(config.get("model"), dict) or "arch" not in config["model"]:
        raise SparcEvalError(f'{path} has no model config with an "arch"')
    validate_model_config(config["model"], path)
    return config


# Ranges a model config must keep before any tensor is allocated: wide enough for every open_clip ViT, narrow
# enough that a hostile config cannot ask for terabytes.
_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("model", "embed_dim"): (1, 8192),
    ("vision_cfg", "layers"): (1, 128),
    ("vision_cfg", "width"): (1, 8192),
    ("vision_cfg", "head_width"): (1, 8192),
    ("vision_cfg", "patch_size"): (1, 1024),
    ("vision_cfg", "image_size"): (1, 4096),
    ("text_cfg", "layers"): (1, 128),
    ("text_cfg", "width"): (1, 8192),
    ("text_cfg", "heads"): (1, 256),
    ("text_cfg", "context_length"): (1, 4096),
    ("text_cfg", "vocab_size"): (1, 1_000_000),
}


def _value_fits(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return any(_value_fits(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def validate_model_config(cfg: dict[str, Any], path: str | os.PathLike) -> None:
    """Check a checkpoint's model config before a model is built: types of every tower field, ranges, and that
    `arch` names the towers it holds (a record names the architecture from it). One line naming `path` and the key."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from sparc_eval.models.sparc import PRESETS

    arch = cfg.get("arch")
    if not isinstance(arch, str) or not arch:
        raise SparcEvalError(f"{path}: model arch must be a non-empty string, got {arch!r}")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise SparcEvalError(f"{path}: model config lacks {key!r}")
    if "quick_gelu" in cfg and not isinstance(cfg["quick_gelu"], bool):
        raise SparcEvalError(f"{path}: model quick_gelu must be true or false, got {cfg['quick_gelu']!r}")
    for tower, fields_of in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        if not isinstance(cfg[tower], dict):
            raise SparcEvalError(f"{path}: model {tower} must be a mapping, got {cfg[tower]!r}")
        hints = typing.get_type_hints(fields_of)
        nullable = {f.name for f in dataclasses.fields(fields_of) if f.default is None}
        for key, value in cfg[tower].items():
            if key not in hints:
                raise SparcEvalError(f"{path}: unknown model {tower} key {key!r}")
            if not (value is None and key in nullable) and not _value_fits(value, hints[key]):
                raise SparcEvalError(f"{path}: model {tower} {key} has value {value!r}, expected {_type_name(hints[key])}")
    for (where, key), (low, high) in _RANGES.items():
        value = cfg.get(key) if where == "model" else cfg[where].get(key)
        if value is None and where != "model":
            continue  # absent: open_clip's default applies
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SparcEvalError(
                f"{path}: model {'' if where == 'model' else where + ' '}{key} must be an integer in [{low}, {high}], got {value!r}"
            )
    for tower in ("vision_cfg", "text_cfg"):
        ratio = cfg[tower].get("mlp_ratio", 4.0)
        if not 0 < ratio <= 64:
            raise SparcEvalError(f"{path}: model {tower} mlp_ratio must be in (0, 64], got {ratio!r}")
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if "width" in vision and "head_width" in vision and vision["width"] % vision["head_width"]:
        raise SparcEvalError(
            f"{path}: model vision_cfg width {vision['width']} is not a multiple of head_width {vision['head_width']}"
        )
    if "width" in text and "heads" in text and text["width"] % text["heads"]:
        raise SparcEvalError(f"{path}: model text_cfg width {text['width']} is not a multiple of heads {text['heads']}")
    _check_arch_matches_towers(cfg, path, PRESETS)


def _arch_base(arch: str) -> dict[str, Any] | None:
    """The architecture fields `arch` fixes: a preset's, or an open_clip architecture's config."""
    import open_clip

    from sparc_eval.models.sparc import PRESETS

    return PRESETS.get(arch) or open_clip.get_model_config(arch)


def tower_overrides(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fields of a model config that differ from what its `arch` fixes, as {"embed_dim" | "TOWER.KEY": value}.
    Written into config.json as "overrides", so that a config whose arch disagrees with its towers without
    saying so is refused (a result record names the architecture from `arch`)."""
    base = _arch_base(cfg["arch"]) or {}
    diffs: dict[str, Any] = {}
    for key in ("embed_dim", "quick_gelu"):
        if key in base and cfg.get(key) != base[key]:
            diffs[key] = cfg.get(key)
    for tower in ("vision_cfg", "text_cfg"):
        for key, expected in base.get(tower, {}).items():
            got = cfg[tower].get(key, expected)
            if got != expected and not (isinstance(expected, tuple) and list(expected) == got):
                diffs[f"{tower}.{key}"] = got
    return diffs


def _check_arch_matches_towers(cfg: dict[str, Any], path: str | os.PathLike, presets: dict[str, dict[str, Any]]) -> None:
    if _arch_base(cfg["arch"]) is None:
        raise SparcEvalError(
            f"{path}: unknown architecture {cfg['arch']!r} (a preset: {', '.join(presets)}, or an open_clip architecture)"
        )
    declared = cfg.get("overrides", {})
    if not isinstance(declared, dict):
        raise SparcEvalError(f"{path}: model overrides must be a mapping, got {declared!r}")
    for key, got in tower_overrides(cfg).items():
        if key not in declared or declared[key] != got:
            where = key.replace(".", " ")
            raise SparcEvalError(
                f"{path}: model {where} {got!r} does not match arch {cfg['arch']!r} and is not among its declared overrides; "
                "the towers are of another architecture"
            )


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing, truncated or corrupt file is a one-line SparcEvalError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SparcEvalError(f"weights file {path} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise SparcEvalError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def load_state_dict_checked(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str | os.PathLike, arch: str) -> None:
    """Load `tensors` into `model` after checking names and shapes, so a file of another architecture is named as such."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        raise SparcEvalError(f"{source} does not fit architecture {arch}: it lacks tensor {missing[0]} ({len(missing)} missing)")
    if unexpected:
        raise SparcEvalError(
            f"{source} does not fit architecture {arch}: it has tensor {unexpected[0]} the model lacks ({len(unexpected)} unexpected)"
        )
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise SparcEvalError(
                f"{source} does not fit architecture {arch}: tensor {key} has shape {list(got.shape)} but the model expects {list(want.shape)}"
            )
    model.load_state_dict(tensors, strict=True)


def load_checkpoint(folder: str | os.PathLike) -> nn.Module:
    """Rebuild the SparcModel stored in checkpoint folder `folder`, with provenance for result records."""
    from sparc_eval.models.sparc import create_model

    folder = Path(folder)
    config = read_config(folder)
    cfg = config["model"]
    try:
        model = create_model(
            cfg["arch"],
            embed_dim=cfg["embed_dim"],
            quick_gelu=cfg.get("quick_gelu", False),
            vision_cfg=cfg["vision_cfg"],
            text_cfg=cfg["text_cfg"],
            local_head=cfg.get("local_head", "linear"),
        )
    except SparcEvalError as exc:
        raise SparcEvalError(f"{folder / CONFIG_FILE}: {exc}") from None
    except KeyError as exc:
        raise SparcEvalError(f"{folder / CONFIG_FILE}: model config lacks {exc}") from None
    weights = folder / WEIGHTS_FILE
    load_state_dict_checked(model, read_safetensors(weights), weights, cfg["arch"])
    model.provenance = {
        "source": "sparc-eval checkpoint",
        "ref": str(folder),
        "sha256": sha256_file(weights),
        "objective": config.get("objective"),
        **({"training": training_recipe(config)} if isinstance(config.get("training"), dict) else {}),
    }
    return model


# Training settings that say how a run was executed, not what was trained: 2 processes reproduce 1, and the batch
# of a step does not depend on the number of DataLoader workers.
RUN_LEVEL_TRAINING_KEYS = ("seed", "steps_done", "world_size", "num_workers", "train_seconds")


def training_recipe(config: dict[str, Any]) -> dict[str, Any]:
    """{"seed": ..., "recipe": ...} of a checkpoint config: the recipe is every training setting but the seed and
    how the run was executed, plus the training data's hash, so checkpoints that differ only by seed share it
    (results.seeds groups their records into one row)."""
    training = config["training"]
    recipe = {k: v for k, v in training.items() if k not in RUN_LEVEL_TRAINING_KEYS}
    data = config.get("data")
    recipe["data_sha256"] = data.get("pairs_sha256") if isinstance(data, dict) else None
    return {"seed": training.get("seed"), "recipe": recipe}

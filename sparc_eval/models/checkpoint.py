"""sparc-eval checkpoints: a folder holding `model.safetensors` and `config.json`, written atomically.

config.json records everything needed to rebuild and to trust the model: the full model config
(architecture, every open_clip tower field, tokenizer, preprocessing), plus whatever the writer adds
(objective and its weights, training steps and seed, data manifest hash, git revision, package versions).
Weights are safetensors only, so reading a checkpoint never executes code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file, write_json_atomic

FORMAT = "sparc-eval-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it onto `path` only if the block succeeds.

    `path` must not exist yet: a folder cannot be renamed over a non-empty one, and a checkpoint is
    never half-replaced. A failure leaves nothing behind.
    """
    path = Path(path)
    if path.exists():
        raise SparcEvalError(f"{path} already exists; choose another output folder or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _default_permissions(tmp)
        os.rename(tmp, path)
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
    write_json_atomic(folder / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config, **card})


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
    return config


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
    }
    return model

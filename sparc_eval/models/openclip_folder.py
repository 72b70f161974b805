"""open_clip's own folder forms: `openclip:local-dir:PATH` and `openclip:hf-hub:ORG/NAME[@REVISION]`.

A local-dir folder is what open_clip's `save_for_hf` / `push_to_hf_hub` write and what
`open_clip.create_model("local-dir:PATH")` reads: open_clip_config.json ({"model_cfg": ..., "preprocess_cfg":
...}) and the weights beside it. The model is built from that config, preprocessed with that preprocess
config and tokenized with `open_clip.get_tokenizer("local-dir:PATH")`, as open_clip itself does.

Weights: open_clip_model.safetensors, open_clip_pytorch_model.safetensors or model.safetensors first; then the
pickles open_clip reads (open_clip_pytorch_model.bin/.pth, pytorch_model.bin/.pth, model.pth), through
`read_weights_file` (tensors only unless trust_pickle). open_clip's own order would take a pickle before
model.safetensors; here safetensors always win, since both hold the same weights and only a pickle can run code.

An hf-hub repository is downloaded (config, safetensors, tokenizer files; a pickle only when it has no
safetensors) into huggingface_hub's cache and read as a local-dir folder; offline it is a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file
from sparc_eval.models.checkpoint import load_state_dict_checked

CONFIG_NAME = "open_clip_config.json"
SAFE_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors")
PICKLED_WEIGHTS = (
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"


def load_openclip_folder(spec: str, *, trust_pickle: bool) -> nn.Module:
    """`spec` is `local-dir:PATH` or `hf-hub:ORG/NAME[@REVISION]` (the part after `openclip:`)."""
    ref = f"openclip:{spec}"
    provenance: dict[str, Any] = {"ref": ref}
    if spec.startswith(HF_HUB):
        folder, provenance["hub"] = _fetch(spec[len(HF_HUB) :])
    else:
        if not spec[len(LOCAL_DIR) :]:
            raise SparcEvalError(f"{ref} names no folder; use openclip:local-dir:/path/to/folder")
        folder = Path(spec[len(LOCAL_DIR) :]).expanduser()
        if not folder.is_dir():
            raise SparcEvalError(f"open_clip folder {folder} (in {ref}) does not exist or is not a folder")
    return load_local_dir(folder, provenance, trust_pickle=trust_pickle)


def read_folder_config(folder: Path) -> dict[str, Any]:
    """open_clip_config.json of a local-dir folder: {"model_cfg": {...}, "preprocess_cfg": {...}}."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise SparcEvalError(f"folder {folder} is not an open_clip local-dir folder (it has no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparcEvalError(f"{path} is not readable JSON ({(str(exc).splitlines() or [''])[0][:160]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise SparcEvalError(f"{path} has no model_cfg object, so it names no open_clip architecture")
    if not isinstance(config.get("preprocess_cfg", {}), dict):
        raise SparcEvalError(f"{path}: preprocess_cfg must be an object")
    return config


def find_weights(folder: Path) -> Path:
    for name in (*SAFE_WEIGHTS, *PICKLED_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    raise SparcEvalError(
        f"folder {folder} has {CONFIG_NAME} but no weights ({', '.join(SAFE_WEIGHTS)}, or a pickle such as {PICKLED_WEIGHTS[0]})"
    )


def load_local_dir(folder: Path, provenance: dict[str, Any], *, trust_pickle: bool) -> nn.Module:
    import open_clip

    from sparc_eval.models.loaders import read_weights_file
    from sparc_eval.models.openclip_model import OpenClipModel, check_supported

    config = read_folder_config(folder)
    name = f"{LOCAL_DIR}{folder}"
    check_supported(f"{name}", config["model_cfg"])
    weights = find_weights(folder)
    tensors = read_weights_file(weights, trust_pickle=trust_pickle)
    logging.disable(logging.WARNING)  # open_clip warns on the root logger that no weights were loaded: we load them below
    try:
        clip = open_clip.create_model(name, load_weights=False)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise SparcEvalError(f"{folder / CONFIG_NAME}: open_clip cannot build a model from its model_cfg ({first})") from None
    finally:
        logging.disable(logging.NOTSET)
    load_state_dict_checked(clip, tensors, weights, f"open_clip {name}")
    # The record's hash covers what decides the numbers: the config (architecture and preprocessing) and the weights.
    files = {CONFIG_NAME: sha256_file(folder / CONFIG_NAME), weights.name: sha256_file(weights)}
    digest = hashlib.sha256("".join(f"{n}\0{sha}\n" for n, sha in sorted(files.items())).encode()).hexdigest()
    provenance = {**provenance, "sha256": digest, "weights": weights.name, "files": files}
    return OpenClipModel(clip, name, provenance)


def _fetch(spec: str) -> tuple[Path, dict[str, str]]:
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    if not repo or repo.count("/") != 1:
        raise SparcEvalError(f"openclip:hf-hub:{spec} does not name a Hub repository (ORG/NAME)")
    try:
        path = Path(
            snapshot_download(repo, revision=revision or None, allow_patterns=[CONFIG_NAME, "*.safetensors", "*.json", "*.txt"])
        )
        if not any((path / n).is_file() for n in SAFE_WEIGHTS) and (path / CONFIG_NAME).is_file():
            # No safetensors: fetch open_clip's pickle; read_weights_file refuses code in it unless trusted.
            path = Path(snapshot_download(repo, revision=revision or None, allow_patterns=[CONFIG_NAME, *PICKLED_WEIGHTS]))
    except Exception as exc:  # offline, unknown repository, gated, network: each means "could not fetch"
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SparcEvalError(
            f"could not fetch open_clip Hub repository {repo!r} (offline? {type(exc).__name__}: {first}); download it where "
            f"there is network (hf download {repo} --local-dir DIR) and pass openclip:local-dir:DIR"
        ) from None
    return path, {"repo": repo, "revision": revision or "main", "commit": path.name}

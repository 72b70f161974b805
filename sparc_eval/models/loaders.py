"""`load_model(ref)`: resolve a checkpoint reference into a model that satisfies the model contract.

References are `SOURCE:SPEC`, or a bare path for a sparc-eval checkpoint folder:
    PATH                        a sparc-eval checkpoint folder (model.safetensors + config.json)
    card:NAME | card:PATH.yaml  a checkpoint card, trained on first use (sparc_eval.checkpoint_cards)
    openclip:ARCH               an open_clip architecture, randomly initialised (seeded: the same every time)
    openclip:ARCH@/path/FILE    open_clip weights from a local file (safetensors, or a torch file of tensors)
    openclip:ARCH@TAG           a named open_clip pretrained tag (downloads; offline it is a clear error)
    openclip:local-dir:PATH     an open_clip folder (open_clip_config.json + weights), open_clip's own form
    openclip:hf-hub:ORG/NAME    an open_clip Hub repository (downloads; offline it is a clear error)
    hf:PATH | hf:ORG/NAME[@REV] a transformers CLIPModel / SiglipModel folder (save_pretrained), or a Hub name

A model source is a function `load(spec, *, trust_pickle) -> model` registered in `LOADERS` under its
SOURCE name (from another package: an entry point in the `sparc_eval.loaders` group). Pickled weights
that need code to load are refused unless `trust_pickle=True`: untrusted checkpoints never execute code.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file
from sparc_eval.models.checkpoint import load_checkpoint, load_state_dict_checked, read_safetensors
from sparc_eval.registry import Registry

Loader = Callable[..., nn.Module]
# `card` trains, so it lives above `models` (sparc_eval.checkpoint_cards); the registry imports it by name only.
LOADERS: Registry[Loader] = Registry(
    "loader",
    {
        "folder": "sparc_eval.models.loaders:load_checkpoint_folder",
        "openclip": "sparc_eval.models.loaders:load_openclip",
        "hf": "sparc_eval.models.hf_model:load_hf",
        "card": "sparc_eval.checkpoint_cards:load_card_model",
    },
)
# `SOURCE:` at the start of a reference: letters first, so that a Windows drive (C:) is never one.
_SOURCE = re.compile(r"^([A-Za-z][\w.-]+):(.*)$", re.S)

# Random open_clip weights come from this seed, so `openclip:ARCH` names one fixed model.
OPENCLIP_INIT_SEED = 0
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def split_reference(ref: str) -> tuple[str, str]:
    """(source, spec) of a checkpoint reference: `openclip:ViT-B-32` -> ("openclip", "ViT-B-32"), a path -> ("folder", path)."""
    if ref.endswith((".yaml", ".yml")) and not ref.startswith("card:"):  # a checkpoint card given by path
        return "card", ref
    match = _SOURCE.match(ref)
    if match is None or Path(ref).exists():
        return "folder", ref
    if match.group(1) not in LOADERS:
        known = ", ".join(f"{name}:..." for name in LOADERS.names() if name != "folder")
        raise SparcEvalError(f"unknown checkpoint reference {ref!r}; use a checkpoint folder or {known}")
    return match.group(1), match.group(2)


def load_model(ref: str, *, trust_pickle: bool = False) -> nn.Module:
    """The model named by `ref` (see module doc), in eval mode, with describe()["ref"] and ["sha256"]."""
    source, spec = split_reference(ref)
    model = LOADERS.get(source, "checkpoint source: ")(spec, trust_pickle=trust_pickle)
    return model.eval()


def load_checkpoint_folder(spec: str, *, trust_pickle: bool) -> nn.Module:
    """A sparc-eval checkpoint folder (safetensors only: nothing in it can carry code)."""
    return load_checkpoint(Path(spec))


def read_weights_file(path: Path, *, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file; pickles that need code load only if trusted."""
    if not path.is_file():
        raise SparcEvalError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        obj = read_safetensors(path)
    else:
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols would add lines to a one-line error
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as exc:
            # weights_only refuses any global outside torch's tensor allowlist before calling it.
            code = re.search(r"GLOBAL ([\w.]+)", str(exc))
            refused = code.group(1) if code else _first_disallowed_global(path)
            if refused is None:
                raise SparcEvalError(f"{path} is not a readable torch weights file (it does not unpickle as tensors)") from None
            raise SparcEvalError(
                f"refusing to load {path}: unpickling it would call {refused}; pass --trust-pickle (trust_pickle=True) only if you trust where the file came from"
            ) from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise SparcEvalError(f"{path} is not a readable torch weights file ({str(exc).splitlines()[0]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise SparcEvalError(f"{path} does not hold a state dict of named tensors")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _first_disallowed_global(path: Path) -> str | None:
    """The first global a pickle would import that torch's weights-only allowlist lacks, read with pickletools
    (which only parses: nothing is imported or called). Covers pickles torch rejects before naming one (an
    unsupported opcode of a newer protocol). A torch zip archive is read through its data.pkl."""
    import io
    import pickletools
    import zipfile

    from torch._weights_only_unpickler import _get_allowed_globals

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return None
    allowed = set(_get_allowed_globals())
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name in ("GLOBAL", "INST"):
                target = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                target = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if target not in allowed:
                return target
    except Exception:  # a malformed stream: whatever was read so far named nothing outside the allowlist
        return None
    return None


def load_openclip(spec: str, *, trust_pickle: bool) -> nn.Module:
    import open_clip

    from sparc_eval.models.openclip_model import OpenClipModel, check_supported

    if spec.startswith(("local-dir:", "hf-hub:")):  # open_clip's own folder forms
        from sparc_eval.models.openclip_folder import load_openclip_folder

        return load_openclip_folder(spec, trust_pickle=trust_pickle)
    arch, _, source = spec.partition("@")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise SparcEvalError(f"unknown open_clip architecture {arch!r} in openclip:{spec}; see open_clip.list_models()")
    check_supported(arch, model_cfg)
    ref = f"openclip:{spec}"
    tag_cfg: dict = {}
    weights: Path | None = None
    tensors: dict[str, torch.Tensor] | None = None
    if source:
        weights = Path(source)
        looks_like_file = weights.exists() or "/" in source or weights.suffix in _WEIGHT_SUFFIXES
        if not looks_like_file:
            tag_cfg = open_clip.get_pretrained_cfg(arch, source)
            if not tag_cfg:
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
                raise SparcEvalError(
                    f"{source!r} in {ref} is neither a weights file nor a pretrained tag of {arch} (tags: {tags})"
                )
            weights = _download_tag(arch, source, tag_cfg)
        tensors = read_weights_file(weights, trust_pickle=trust_pickle)
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    with torch.random.fork_rng():
        torch.manual_seed(OPENCLIP_INIT_SEED)
        # open_clip warns on the root logger that no weights were loaded; we load them ourselves below.
        logging.disable(logging.WARNING)
        try:
            clip = open_clip.create_model(
                arch, pretrained=None, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)), force_preprocess_cfg=preprocess
            )
        finally:
            logging.disable(logging.NOTSET)
    provenance = {"ref": ref, **({"pretrained": source} if tag_cfg else {})}
    if tensors is not None and weights is not None:
        load_state_dict_checked(clip, tensors, weights, f"open_clip {arch}")
        provenance["sha256"] = sha256_file(weights)
    return OpenClipModel(clip, arch, provenance)


def _download_tag(arch: str, tag: str, tag_cfg: dict) -> Path:
    from open_clip.pretrained import download_pretrained

    try:
        path = download_pretrained(tag_cfg)
    except Exception as exc:  # network / hub errors come in many types; all mean "could not fetch"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SparcEvalError(
            f"could not fetch open_clip weights {arch}@{tag} (offline? {first[:200]}); download them where there is network and use openclip:{arch}@/path/to/file"
        ) from None
    return Path(path)

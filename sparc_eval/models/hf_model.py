"""Hugging Face `transformers` CLIP and SigLIP behind the model contract (`hf:PATH`, `hf:ORG/NAME[@REVISION]`).

A folder written by `save_pretrained` holds config.json, the weights (model.safetensors, possibly sharded),
the tokenizer files and preprocessor_config.json; this module reads all four, with transformers' own
classes and never with remote code (`trust_remote_code=False`). Pickled weights (pytorch_model.bin) are
refused unless `trust_pickle=True`, before anything is unpickled.

Global embeddings are exactly those of the model's own forward (the same sub-modules, the same pooling).
Dense paths (describe()["dense_heads"]; a plain CLIP/SigLIP has no trained dense head, so "global" and
"local" are the same path):

- CLIP: MaskCLIP-style, every patch token through `post_layernorm` and `visual_projection`, the maps that
  make the pooled (class-token) embedding. Text tokens: `final_layer_norm` then `text_projection`.
- SigLIP: the vision tower pools with a multi-head attention head (one learned probe query attends over
  all patches, then a residual LayerNorm + MLP). Attention pooling itself cannot apply per patch, but the
  rest of the head can: the pooled vector before the MLP is a convex combination of `out_proj(v_proj(x_i))`
  over patches, so each patch goes through the value and output projections and then the residual MLP.
  A patch's dense embedding is exactly what the head returns when that patch is the only key (the
  MaskCLIP value path, applied to SigLIP's head). Stopping at `post_layernorm` would leave the patches
  in the tower's space, not the space the text head maps into. Text tokens: `final_layer_norm` then `head`.

Text is padded to the full context and the tower gets the attention mask only if the folder's tokenizer
returns one: CLIP's does (its causal attention and end-marker pooling make padding irrelevant anyway);
the official SigLIP conversion's tokenizer returns input_ids only, as big_vision trained (pooled at the
last position, padding included). Its logit bias is recorded in describe(); sigmoid(scale * cos + bias) is increasing
in cos, so classification and retrieval, which rank by cosine similarity, rank exactly as the model's own
sigmoid logits do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file

# model_type in config.json -> the transformers class this loader builds.
SUPPORTED = {"clip": "CLIPModel", "siglip": "SiglipModel"}
ONE_TOWER = {"clip_vision_model", "clip_text_model", "siglip_vision_model", "siglip_text_model"}
CLIP_DENSE = "MaskCLIP-style: patch tokens through post_layernorm and visual_projection (no trained dense head)"
SIGLIP_DENSE = (
    "MaskCLIP-style through SigLIP's attention-pooling head: patch tokens (after post_layernorm) through the head's "
    "value and output projections, then its residual LayerNorm + MLP; the probe attention cannot apply per patch"
)
INSTALL_HINT = "pip install 'sparc-eval[hf]'"
# Files besides the weights that decide what the model computes; their hashes enter describe()["sha256"].
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "tokenizer.model",
)
_VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]


def load_hf(spec: str, *, trust_pickle: bool) -> nn.Module:
    """`hf:PATH` (a save_pretrained folder) or `hf:ORG/NAME[@REVISION]` (fetched from the Hub when online)."""
    _require_transformers()
    if not spec:
        raise SparcEvalError("hf: needs a folder made by save_pretrained (hf:/path/to/folder) or a Hub name (hf:ORG/NAME)")
    folder = Path(spec).expanduser()
    provenance: dict[str, Any] = {"ref": f"hf:{spec}"}
    if not folder.exists():
        if not _HUB_NAME.match(spec):
            raise SparcEvalError(f"folder {folder} (in hf:{spec}) does not exist")
        folder, provenance["hub"] = _fetch(spec, trust_pickle)
    elif not folder.is_dir():
        raise SparcEvalError(f"{folder} (in hf:{spec}) is a file; hf: reads a folder made by save_pretrained")
    return HFModel.from_folder(folder, provenance, trust_pickle=trust_pickle)


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SparcEvalError(f"hf: checkpoints need the optional extra 'hf' (transformers): {INSTALL_HINT}") from None


def _fetch(spec: str, trust_pickle: bool) -> tuple[Path, dict[str, str]]:
    """A Hub repository's files (config, safetensors, tokenizer, processor), cached by huggingface_hub."""
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    try:
        path = Path(snapshot_download(repo, revision=revision or None, allow_patterns=_HUB_FILES))
        if trust_pickle and not any((path / name).is_file() for name in _SAFETENSORS):
            # Only pickled weights in the repository: fetched only when trusted (and read only then, see _weight_files).
            path = Path(snapshot_download(repo, revision=revision or None, allow_patterns=["pytorch_model*.bin", *_HUB_FILES]))
    except Exception as exc:  # offline, unknown repository, gated, network: each means "could not fetch"
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SparcEvalError(
            f"no folder {spec} here and could not fetch Hub repository {repo!r} (offline? {type(exc).__name__}: {first}); "
            f"download it where there is network (hf download {repo} --local-dir DIR) and pass hf:DIR"
        ) from None
    # snapshot_download returns .../snapshots/<commit>: the exact revision that was read.
    return path, {"repo": repo, "revision": revision or "main", "commit": path.name}


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' progress bars and warnings while loading; errors still raise."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        if bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def read_model_type(folder: Path) -> str:
    """The transformers class name a save_pretrained folder holds, if hf: supports it; else a one-line error."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SparcEvalError(f"folder {folder} is not a transformers model folder (it has no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparcEvalError(f"{config_path} is not readable JSON ({_first_line(exc)})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str):
        raise SparcEvalError(f"folder {folder} is not a transformers model folder (its config.json names no model_type)")
    architectures = config.get("architectures") or []
    held = architectures[0] if architectures else f"model of type {model_type!r}"
    supported = " and ".join(SUPPORTED.values())
    if model_type in ONE_TOWER:
        raise SparcEvalError(
            f"folder {folder} holds a {held}, a single tower: hf: reads {supported} folders (both towers and the logit scale)"
        )
    if model_type not in SUPPORTED:
        raise SparcEvalError(f"folder {folder} holds a {held} (model_type {model_type!r}); hf: reads {supported} folders")
    if architectures and SUPPORTED[model_type] not in architectures:
        raise SparcEvalError(f"folder {folder} holds a {held}; hf: reads {supported} folders")
    return SUPPORTED[model_type]


def _weight_files(folder: Path, trust_pickle: bool) -> tuple[list[Path], bool]:
    """(weight files, pickled?) of a folder: safetensors if there are any; pickles only when trusted."""
    for names, pickled in ((_SAFETENSORS, False), (_PICKLES, True)):
        for name in names:
            path = folder / name
            if not path.is_file():
                continue
            if pickled and not trust_pickle:
                raise SparcEvalError(
                    f"folder {folder} holds only pickled weights ({name}), which can run code when loaded; convert them to "
                    "safetensors, or pass --trust-pickle (trust_pickle=True) only if you trust where they came from"
                )
            if not name.endswith(".index.json"):
                return [path], pickled
            return [path, *_shards(path, folder)], pickled
    raise SparcEvalError(f"folder {folder} has no weights (model.safetensors or pytorch_model.bin)")


def _shards(index: Path, folder: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise SparcEvalError(f"{index} is not a readable weight index ({_first_line(exc)})") from None
    shards = []
    for name in names:
        shard = (folder / name).resolve()
        if not isinstance(name, str) or shard.parent != folder.resolve():
            raise SparcEvalError(f"{index} names shard {name!r} outside folder {folder}")
        if not shard.is_file():
            raise SparcEvalError(f"{index} names shard {name}, which is missing from {folder}")
        shards.append(shard)
    return shards


def _read_pickled(weights: list[Path]) -> dict[str, torch.Tensor]:
    from sparc_eval.models.loaders import read_weights_file

    files = weights[1:] if weights[0].name.endswith(".index.json") else weights
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_weights_file(path, trust_pickle=True))
    return state


def _compare_tensors(model_class: Any, folder: Path, weights: list[Path], pickled: bool) -> dict[str, Any]:
    """Missing / unexpected / reshaped tensors of safetensors weights against the model the config builds (on the
    meta device: no memory); used to name the problem when transformers itself fails to load them."""
    if pickled:
        return {}
    try:
        from safetensors import safe_open

        config = model_class.config_class.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
        found: dict[str, tuple[int, ...]] = {}
        for path in weights:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    found.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    except Exception:  # the diagnosis is best effort; the caller reports transformers' own error
        return {}
    return {
        "missing_keys": expected.keys() - found.keys(),
        "unexpected_keys": found.keys() - expected.keys(),
        "mismatched_keys": [k for k in expected.keys() & found.keys() if expected[k] != found[k]],
    }


def _check_loading_info(info: dict[str, Any], where: str, class_name: str) -> None:
    """Every tensor of the model must come from the weights, and every tensor of the weights must be used:
    transformers would otherwise fill the gaps with random values and only log a warning."""
    problems = []
    for key, what in (
        ("missing_keys", "missing"),
        ("unexpected_keys", "not in the model"),
        ("mismatched_keys", "of another shape"),
    ):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or ())
        if names:
            problems.append(f"{len(names)} tensors {what} (e.g. {names[0]})")
    if problems:
        raise SparcEvalError(f"{where}: its weights do not fit its config ({class_name}): {'; '.join(problems)}")


def folder_digest(folder: Path, weights: list[Path]) -> tuple[str, dict[str, str]]:
    """sha256 over every file that decides what the model computes (config, weights, tokenizer, processor)."""
    names = ["config.json", *(p.name for p in weights)]
    names += [n for n in (*_TOKENIZER_FILES, *_PROCESSOR_FILES) if (folder / n).is_file()]
    files = {name: sha256_file(folder / name) for name in sorted(set(names))}
    digest = hashlib.sha256("".join(f"{name}\0{sha}\n" for name, sha in files.items()).encode()).hexdigest()
    return digest, files


class ImageProcessorTransform:
    """PIL image -> [3, H, W] float tensor through the checkpoint's own image processor (picklable for workers)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


class HFModel(nn.Module):
    """A transformers CLIPModel or SiglipModel, its tokenizer and its image processor, as the model contract."""

    def __init__(self, model: nn.Module, tokenizer: Any, processor: Any, provenance: dict[str, Any]):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = ImageProcessorTransform(processor)
        self.provenance = provenance
        self.kind = type(model).__name__
        self.is_siglip = self.kind == "SiglipModel"
        vision, text = model.config.vision_config, model.config.text_config
        self.grid = (vision.image_size // vision.patch_size,) * 2
        self.context_length = int(text.max_position_embeddings)
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.text_attention_mask = "attention_mask" in tokenizer.model_input_names
        tokenizer.padding_side = "right"  # SigLIP pools the last position; both towers expect text first

    @classmethod
    def from_folder(cls, folder: Path, provenance: dict[str, Any], *, trust_pickle: bool) -> HFModel:
        import transformers

        class_name = read_model_type(folder)
        weights, pickled = _weight_files(folder, trust_pickle)
        model_class = getattr(transformers, class_name)
        where = f"folder {folder}"
        # Tensors of another shape are reported in `info` (and refused below) rather than raised without a name.
        options = {"output_loading_info": True, "ignore_mismatched_sizes": True, "trust_remote_code": False}
        with _quiet():
            try:
                if pickled:  # reached only with trust_pickle: read by sparc-eval's one pickle reader, as open_clip files are
                    config = model_class.config_class.from_pretrained(folder, local_files_only=True)
                    state = _read_pickled(weights)
                    model, info = model_class.from_pretrained(None, config=config, state_dict=state, **options)
                else:
                    model, info = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True, **options)
            except Exception as exc:  # transformers fails in many ways on foreign weights (4.x: IndexError on some shapes)
                _check_loading_info(_compare_tensors(model_class, folder, weights, pickled), where, class_name)
                raise SparcEvalError(
                    f"{where}: transformers could not load its {class_name} ({type(exc).__name__}: {_first_line(exc)})"
                ) from None
            _check_loading_info(info, where, class_name)
            if not getattr(model.config.vision_config, "vision_use_head", True):  # SigLIP towers kept for VLMs (PaliGemma)
                raise SparcEvalError(
                    f"{where}: its SigLIP vision tower has no pooling head (vision_use_head is false), so no image embedding"
                )
            # Without vocabulary files some tokenizer classes build a placeholder vocabulary instead of failing.
            if not any((folder / name).is_file() for name in _VOCABULARY_FILES):
                raise SparcEvalError(f"{where} has no tokenizer files (one of {', '.join(_VOCABULARY_FILES)})")
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            except Exception as exc:  # missing files, a class needing remote code or a missing backend: all one line
                hint = f"; {INSTALL_HINT}" if re.search("sentencepiece|protobuf", str(exc), re.I) else ""
                raise SparcEvalError(f"{where} has no tokenizer transformers can load ({_first_line(exc)}){hint}") from None
            if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
                raise SparcEvalError(
                    f"{where}: its tokenizer has no padding or end token, so texts cannot be padded to the context"
                )
            try:
                processor = transformers.AutoImageProcessor.from_pretrained(
                    folder, local_files_only=True, trust_remote_code=False
                )
            except Exception as exc:
                raise SparcEvalError(
                    f"{where} has no image processor transformers can load (preprocessor_config.json: {_first_line(exc)})"
                ) from None
        digest, files = folder_digest(folder, weights)
        provenance = {**provenance, "sha256": digest, "files": files}
        hf = cls(model.float().eval(), tokenizer, processor, provenance)
        hf.check_processor(where)
        return hf

    def check_processor(self, where: str) -> None:
        """The image processor must make images of the size the vision tower was built for."""
        size = self.model.config.vision_config.image_size
        shape = tuple(self.preprocess(Image.new("RGB", (size + 7, size + 3))).shape)
        if shape != (3, size, size):
            raise SparcEvalError(
                f"{where}: its image processor makes images of shape {list(shape)}, the model takes [3, {size}, {size}]"
            )

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        # Full-context padding: SigLIP pools the last position and was trained so; for CLIP it changes nothing
        # (causal attention, end-marker pooling).
        out = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return out["input_ids"]

    def _end(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of each row's first end marker (the row's length when it has none)."""
        is_end = tokens == self.tokenizer.eos_token_id
        return torch.where(is_end.any(1), is_end.int().argmax(1), tokens.shape[1])

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """The attention mask the tokenizer returns with these ids (right padding): 1 up to the padding."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        if self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:  # padding starts after the first end marker
            return (positions[None] <= self._end(tokens)[:, None]).long()
        trailing_pad = (tokens == self.tokenizer.pad_token_id).flip(1).cumprod(1).flip(1).bool()
        return (~trailing_pad).long()

    def _text(self, tokens: torch.Tensor) -> Any:
        # The text tower called as with its tokenizer's output: with the attention mask when the tokenizer gives
        # one (CLIP's always; the official SigLIP conversion gives input_ids only, as big_vision trained).
        if self.text_attention_mask:
            return self.model.text_model(input_ids=tokens, attention_mask=self.attention_mask(tokens))
        return self.model.text_model(input_ids=tokens)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self._text(tokens).pooler_output
        if not self.is_siglip:  # SigLIP's text head is already inside pooler_output
            pooled = self.model.text_projection(pooled)
        return F.normalize(pooled, dim=-1)

    def encode_text_dense(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self._text(tokens).last_hidden_state  # after final_layer_norm in both classes
        dense = self.model.text_model.head(hidden) if self.is_siglip else self.model.text_projection(hidden)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        special = torch.tensor(self.special_ids, device=tokens.device)
        mask = ~torch.isin(tokens, special) & (positions[None] < self._end(tokens)[:, None]) & self.attention_mask(tokens).bool()
        return dense, mask

    # ------------------------------------------------------------------ image

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=images).pooler_output
        if not self.is_siglip:
            pooled = self.model.visual_projection(pooled)
        return F.normalize(pooled, dim=-1)

    def encode_image_dense(self, images: torch.Tensor, head: str = "global") -> tuple[torch.Tensor, tuple[int, int]]:
        if head not in ("global", "local"):
            raise SparcEvalError(f"unknown dense head {head!r}; use 'global' or 'local'")
        vision = self.model.vision_model
        hidden = vision(pixel_values=images).last_hidden_state
        if not self.is_siglip:  # CLIP normalises only the class token inside the tower
            return self.model.visual_projection(vision.post_layernorm(hidden[:, 1:])), self.grid
        pool = vision.head  # SigLIP: last_hidden_state is already post_layernorm
        dim = hidden.shape[-1]
        attention = pool.attention
        values = F.linear(hidden, attention.in_proj_weight[2 * dim :], attention.in_proj_bias[2 * dim :])
        tokens = attention.out_proj(values)
        return tokens + pool.mlp(pool.layernorm(tokens)), self.grid

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().reshape(())

    def describe(self) -> dict[str, Any]:
        import transformers

        prov = self.provenance
        dense = SIGLIP_DENSE if self.is_siglip else CLIP_DENSE
        vision = self.model.config.vision_config
        described: dict[str, Any] = {
            "source": "hf",
            "ref": prov["ref"],
            "sha256": prov["sha256"],
            "arch": self.kind,
            "class": f"transformers.{self.kind}",
            "objective": "siglip (transformers)" if self.is_siglip else "clip (transformers)",
            "dense_heads": {"global": dense, "local": dense},
            "image_size": [vision.image_size, vision.image_size],
            "patch_grid": list(self.grid),
            "context_length": self.context_length,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "tokenizer": type(self.tokenizer).__name__,
            "image_processor": type(self.preprocess.processor).__name__,
            "logit_scale": float(self.logit_scale.detach()),
            "transformers": transformers.__version__,
            "files": prov["files"],
        }
        if self.is_siglip:
            described["logit_bias"] = float(self.model.logit_bias.detach().reshape(()))
            described["scoring"] = (
                "ranked by cosine similarity: the model's sigmoid(logit_scale * cos + logit_bias) is increasing in cos, "
                "so the order is the same"
            )
        described["text_encoding"] = (
            f"padded to the full context ({self.context_length}), "
            + (
                "with the tokenizer's attention mask"
                if self.text_attention_mask
                else "no attention mask (the tokenizer gives none)"
            )
            + (", pooled at the last position" if self.is_siglip else ", pooled at the end marker")
        )
        if "hub" in prov:
            described["hub"] = prov["hub"]
        return described


# The optional library this loader needs, {import name: sparc-eval extra} (checked before any work, like runners').
load_hf.requires = {"transformers": "hf"}  # type: ignore[attr-defined]

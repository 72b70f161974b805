"""The SPARC dual encoder (Bica et al. 2024, Section 2) on open_clip's ViT and text-transformer towers.

    patch embeddings   v_p = g_v(f_v(x)_p)                      (what the fine-grained loss aligns)
    token embeddings   t_l = g_t(f_t(x)_l)
    global image       v   = g_v(h_v(mean_p f_v(x)_p))          h_v: one non-linear dense layer
    global text        t   = g_t(mean_l f_t(x)_l)               mean over real tokens only

g_v and g_t are linear adapters shared by the global and the fine-grained loss; one learned inverse
temperature serves both. The towers are open_clip's own VisionTransformer / TextTransformer, called
directly: the vision tower returns its patch tokens (after its final LayerNorm) through
`output_tokens`, the text tower its token features (after ln_final); their own projections are
dropped, since g_v / g_t take their place. open_clip always prepends a class token to the patch
sequence; its output is never used (the global image embedding is the mean over patches).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparc_eval.errors import SparcEvalError

# CLIP's initial inverse temperature, 1/0.07; training clamps it at 100 as CLIP does.
INIT_LOGIT_SCALE = 1.0 / 0.07
MAX_LOGIT_SCALE = 100.0

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

PRESETS: dict[str, dict[str, Any]] = {
    # 64 px, 8x8 = 64 patches: trains on a 2-core CPU in minutes (FINDINGS.md set-up).
    "tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
    },
    # The paper's ViT-B/16 set-up (App. D.1): text tower 12 layers, width 768, 12 heads; shared space 512.
    "vit-b-16": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
    },
}

_OVERRIDE_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "local_head")
# The local dense head (what fine-grained losses align): "linear" is g_v alone; "linear+mlp" adds a non-linear
# branch, g_v(x) + MLP(x), PACL's residual vision embedder (models/objective_pacl.py).
LOCAL_HEADS = ("linear", "linear+mlp")


def resolve_config(arch: str, **overrides: Any) -> dict[str, Any]:
    """The full model config for `arch` (a preset or an open_clip architecture name) with `overrides` merged in.

    The result lists every field of open_clip's CLIPVisionCfg / CLIPTextCfg, so a checkpoint's
    config.json rebuilds the same towers even if open_clip's defaults change.
    """
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if arch in PRESETS:
        base = copy.deepcopy(PRESETS[arch])
    else:
        base = open_clip.get_model_config(arch)
        if base is None:
            raise SparcEvalError(
                f"unknown architecture {arch!r}; use a preset ({', '.join(PRESETS)}) or an open_clip architecture name such as ViT-B-16"
            )
        base = {k: base[k] for k in _OVERRIDE_KEYS if k in base}
    unknown = sorted(set(overrides) - set(_OVERRIDE_KEYS))
    if unknown:
        raise SparcEvalError(f"unknown model override {unknown[0]!r}; known: {', '.join(_OVERRIDE_KEYS)}")
    local_head = overrides.pop("local_head", "linear")
    if local_head not in LOCAL_HEADS:
        raise SparcEvalError(f"unknown local head {local_head!r}; use one of {', '.join(LOCAL_HEADS)}")
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if key.endswith("_cfg") else value

    vision, text = base["vision_cfg"], base["text_cfg"]
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)) or vision.get("attentional_pool"):
        raise SparcEvalError(f"architecture {arch!r} has no plain ViT image tower; SPARC needs a ViT patch grid")
    if text.get("hf_model_name") or text.get("hf_tokenizer_name") or text.get("embed_cls"):
        raise SparcEvalError(f"architecture {arch!r} has no plain open_clip text transformer with the BPE tokenizer")
    try:
        vision = asdict(CLIPVisionCfg(**vision))
        text = asdict(CLIPTextCfg(**text))
    except TypeError as exc:
        raise SparcEvalError(f"bad tower config for architecture {arch!r}: {exc}") from None
    # Patch tokens must come back whole and LayerNorm-ed; the towers' own projections are replaced by g_v / g_t.
    vision.update(output_tokens=True, patch_dropout=0.0, final_ln_after_pool=False)
    text.update(output_tokens=True, proj_type="none")
    image_size, patch_size = vision["image_size"], vision["patch_size"]
    if not isinstance(image_size, int) or not isinstance(patch_size, int) or image_size % patch_size:
        raise SparcEvalError(f"architecture {arch!r}: image_size {image_size} must be a multiple of patch_size {patch_size}")
    return {
        "arch": arch,
        "embed_dim": int(base["embed_dim"]),
        "quick_gelu": bool(base.get("quick_gelu", False)),
        "vision_cfg": vision,
        "text_cfg": text,
        "h_v": "linear+gelu",
        "local_head": local_head,
        "init_logit_scale": INIT_LOGIT_SCALE,
        "preprocess": {
            "size": image_size,
            "mean": list(OPENAI_MEAN),
            "std": list(OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "tokenizer": {"kind": "open_clip.SimpleTokenizer", "context_length": text["context_length"]},
    }


def text_token_mask(tokens: torch.Tensor, eot_token_id: int) -> torch.Tensor:
    """True on word pieces: strictly after the start marker (position 0) and before the end marker.

    Padding id 0 is also the id of a real byte token ('!'), so the mask comes from positions, not ids.
    """
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    has_eot = tokens == eot_token_id
    # Every tokenized caption has an end marker; a row without one (foreign tokens) counts to its end.
    end = torch.where(has_eot.any(1), has_eot.int().argmax(1), tokens.shape[1])
    return (positions[None, :] >= 1) & (positions[None, :] < end[:, None])


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 of the module's state dict serialised as safetensors (the hash of a model that has no weights file)."""
    import hashlib

    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return hashlib.sha256(save(tensors)).hexdigest()


class SparcModel(nn.Module):
    """SPARC dual encoder; implements sparc_eval.models.contract.ImageTextModel. Build with `create_model`."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        import open_clip
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg, _build_text_tower, _build_vision_tower

        self.config = copy.deepcopy(config)
        embed_dim, quick_gelu = config["embed_dim"], config["quick_gelu"]
        self.visual = _build_vision_tower(embed_dim, CLIPVisionCfg(**config["vision_cfg"]), quick_gelu)
        self.visual.proj = None  # g_v replaces the tower's projection
        self.text = _build_text_tower(embed_dim, CLIPTextCfg(**config["text_cfg"]), quick_gelu)
        width_v, width_t = config["vision_cfg"]["width"], config["text_cfg"]["width"]
        self.h_v = nn.Sequential(nn.Linear(width_v, width_v), nn.GELU())
        self.g_v = nn.Linear(width_v, embed_dim, bias=False)
        self.g_t = nn.Linear(width_t, embed_dim, bias=False)
        nn.init.normal_(self.g_v.weight, std=width_v**-0.5)
        nn.init.normal_(self.g_t.weight, std=width_t**-0.5)
        # Configs written before local heads existed have none: g_v alone.
        self.local_mlp = (
            nn.Sequential(nn.Linear(width_v, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
            if config.get("local_head", "linear") == "linear+mlp"
            else None
        )
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config["init_logit_scale"])))

        self.tokenizer = open_clip.SimpleTokenizer(context_length=config["tokenizer"]["context_length"])
        pp = config["preprocess"]
        self.preprocess = open_clip.image_transform(
            pp["size"],
            is_train=False,
            mean=tuple(pp["mean"]),
            std=tuple(pp["std"]),
            interpolation=pp["interpolation"],
            resize_mode=pp["resize_mode"],
        )
        # Set by loaders (checkpoint reference and weights-file hash) for result records.
        self.provenance: dict[str, Any] = {}

    # ------------------------------------------------------------------ towers

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """f_v: patch tokens [B, P, width] after the tower's final LayerNorm (class token dropped)."""
        _, patches = self.visual(images)
        return patches

    def token_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """f_t: token features [B, L, width] after the tower's final LayerNorm.

        Causal (open_clip's default): each token sees the tokens before it. Bidirectional (text_cfg
        no_causal_mask): each token sees every token up to and including the end marker, never the padding
        after it (open_clip's own pad mask would also hide real '!' tokens, whose id is the padding id 0).
        """
        if self.text.attn_mask is not None:
            _, feats = self.text(tokens)
            return feats
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        has_eot = tokens == self.tokenizer.eot_token_id
        end = torch.where(has_eot.any(1), has_eot.int().argmax(1), tokens.shape[1] - 1)
        padded = positions[None, :] > end[:, None]  # [B, L] keys that no query may see
        x = self.text.token_embedding(tokens) + self.text.positional_embedding[: tokens.shape[1]]
        mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device).masked_fill(padded, float("-inf"))
        mask = mask[:, None, :].expand(-1, tokens.shape[1], -1).repeat_interleave(self.text.heads, 0)
        return self.text.ln_final(self.text.transformer(x, attn_mask=mask))

    def local_embed(self, patches: torch.Tensor) -> torch.Tensor:
        """The local dense head: g_v(f_v), plus PACL's non-linear branch when the model has one."""
        return self.g_v(patches) if self.local_mlp is None else self.g_v(patches) + self.local_mlp(patches)

    def text_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        return text_token_mask(tokens, self.tokenizer.eot_token_id)

    # ------------------------------------------------------------------ training forward

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the objectives need, from one pass through each tower."""
        patches = self.patch_features(images)
        feats = self.token_features(tokens)
        mask = self.text_mask(tokens)
        return {
            "image_emb": F.normalize(self.g_v(self.h_v(patches.mean(1))), dim=-1),
            "text_emb": F.normalize(self.g_t(_masked_mean(feats, mask)), dim=-1),
            "patch_emb": self.local_embed(patches),
            "token_emb": self.g_t(feats),
            "token_mask": mask,
            "tokens": tokens,
            "logit_scale": self.logit_scale,
        }

    # ------------------------------------------------------------------ model contract

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.g_v(self.h_v(self.patch_features(images).mean(1))), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.g_t(_masked_mean(self.token_features(tokens), self.text_mask(tokens))), dim=-1)

    def encode_image_dense(self, images: torch.Tensor, head: str = "global") -> tuple[torch.Tensor, tuple[int, int]]:
        patches = self.patch_features(images)
        if head == "global":
            dense = self.g_v(self.h_v(patches))
        elif head == "local":
            dense = self.local_embed(patches)
        else:
            raise SparcEvalError(f"unknown dense head {head!r}; use 'global' or 'local'")
        return dense, tuple(self.visual.grid_size)

    def encode_text_dense(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.g_t(self.token_features(tokens)), self.text_mask(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp()

    def describe(self) -> dict[str, Any]:
        prov = self.provenance
        if "sha256" not in prov:
            prov["sha256"] = state_dict_sha256(self)
        return {
            "source": prov.get("source", "sparc-eval"),
            "ref": prov.get("ref", f"create_model:{self.config['arch']}"),
            "sha256": prov["sha256"],
            "arch": self.config["arch"],
            "objective": prov.get("objective"),
            **({"training": prov["training"]} if "training" in prov else {}),
            "dense_heads": {
                "global": "g_v(h_v(patch)) (paper App. D.7)",
                "local": "g_v(patch) (aligned by the fine-grained loss)"
                if self.local_mlp is None
                else "g_v(patch) + MLP(patch) (PACL's vision embedder, aligned by its patch-level loss)",
            },
            "text_attention": "causal" if self.text.attn_mask is not None else "bidirectional (padding masked)",
            "embed_dim": self.config["embed_dim"],
            "image_size": self.config["preprocess"]["size"],
            "patch_grid": list(self.visual.grid_size),
            "context_length": self.config["tokenizer"]["context_length"],
            "n_params": sum(p.numel() for p in self.parameters()),
        }


def _masked_mean(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens; a caption with none (empty text) gives the zero vector."""
    m = mask.to(feats.dtype).unsqueeze(-1)
    return (feats * m).sum(1) / m.sum(1).clamp(min=1.0)


def create_model(arch: str, **overrides: Any) -> SparcModel:
    """A freshly initialised SPARC model of architecture `arch` (see PRESETS), tower configs overridable.

    Example: create_model("tiny"), create_model("ViT-B-16", embed_dim=256, text_cfg={"context_length": 32})
    """
    return SparcModel(resolve_config(arch, **overrides))

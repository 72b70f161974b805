"""A plain open_clip CLIP behind the model contract.

Such a model has no trained dense head, so both dense heads are the MaskCLIP-style path: patch tokens
through the vision tower's final LayerNorm and projection; token features through ln_final and the
text projection. describe()["dense_heads"] says so, and result records carry it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.sparc import state_dict_sha256, text_token_mask

MASKCLIP_DENSE = "MaskCLIP-style: patch tokens through ln_post and proj (no trained dense head)"


def check_supported(arch: str, model_cfg: dict[str, Any]) -> None:
    """Refuse architectures whose towers have no patch grid or whose tokenizer is not open_clip's BPE."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)) or vision.get("attentional_pool"):
        raise SparcEvalError(f"open_clip architecture {arch!r} has no plain ViT image tower, so it has no patch embeddings")
    if text.get("hf_model_name") or text.get("hf_tokenizer_name") or text.get("embed_cls") or "multimodal_cfg" in model_cfg:
        raise SparcEvalError(
            f"open_clip architecture {arch!r} needs a text tower or tokenizer sparc-eval does not support (only open_clip's BPE text transformer)"
        )


class OpenClipModel(nn.Module):
    """Wraps an open_clip CLIP / CustomTextCLIP with a ViT image tower and open_clip's BPE tokenizer."""

    def __init__(self, clip: nn.Module, arch: str, provenance: dict[str, Any]):
        super().__init__()
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.clip = clip
        self.arch = arch
        self.clip.visual.output_tokens = True
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.preprocess = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
        self.provenance = provenance

    def _visual(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.clip.visual
        pooled, tokens = visual(images)
        if visual.final_ln_after_pool:  # the tower normed only the pooled token
            tokens = visual.ln_post(tokens)
        return pooled, tokens

    def _text_tower(self) -> nn.Module:
        # CustomTextCLIP keeps its TextTransformer in .text; CLIP spreads the same modules over itself.
        return self.clip.text if hasattr(self.clip, "text") else self.clip

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._visual(images)[0], dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=True)

    def encode_image_dense(self, images: torch.Tensor, head: str = "global") -> tuple[torch.Tensor, tuple[int, int]]:
        if head not in ("global", "local"):
            raise SparcEvalError(f"unknown dense head {head!r}; use 'global' or 'local'")
        _, tokens = self._visual(images)
        return tokens @ self.clip.visual.proj, tuple(self.clip.visual.grid_size)

    def encode_text_dense(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tower = self._text_tower()
        x = tower.token_embedding(tokens) + tower.positional_embedding[: tokens.shape[1]]
        x = tower.transformer(x, attn_mask=tower.attn_mask)
        x = tower.ln_final(x)
        proj = tower.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x, text_token_mask(tokens, self.tokenizer.eot_token_id)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def describe(self) -> dict[str, Any]:
        prov = self.provenance
        if "sha256" not in prov:
            prov["sha256"] = state_dict_sha256(self.clip)
        visual = self.clip.visual
        return {
            "source": "open_clip",
            "ref": prov["ref"],
            "sha256": prov["sha256"],
            "arch": self.arch,
            "objective": prov.get("objective", "clip (open_clip)"),
            "dense_heads": {"global": MASKCLIP_DENSE, "local": MASKCLIP_DENSE},
            "image_size": list(visual.image_size),
            "patch_grid": list(visual.grid_size),
            "context_length": self.tokenizer.context_length,
            "n_params": sum(p.numel() for p in self.clip.parameters()),
            # A named pretrained tag, the weights file of a folder, the Hub revision read, per-file hashes.
            **{k: prov[k] for k in ("pretrained", "weights", "hub", "files") if k in prov},
        }

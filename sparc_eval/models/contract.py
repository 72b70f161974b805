"""The model contract: the one interface every task runner consumes, whatever made the checkpoint.

Dense outputs are *unnormalised* embeddings in the shared space (SPARC's alignment weights need the
raw dot products); global outputs are L2-normalised. Every model is a torch.nn.Module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from PIL import Image

DenseHead = Literal["global", "local"]


@runtime_checkable
class ImageTextModel(Protocol):
    # Images: float [B, 3, H, W] as produced by `preprocess`; tokens: long [N, L] from `tokenize`.
    preprocess: Callable[[Image.Image], torch.Tensor]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [N, L] (padded with the tokenizer's pad id)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global image embeddings [B, D], L2-normalised."""

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Global text embeddings [B, D], L2-normalised."""

    def encode_image_dense(self, images: torch.Tensor, head: DenseHead = "global") -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embeddings [B, P, D] in the shared space (unnormalised) and the patch grid (h, w), P = h*w.

        head="global": every patch token through the same head as the pooled embedding (SPARC: h_v then g_v).
        head="local": the path the fine-grained loss aligns (SPARC: g_v only).
        """

    def encode_text_dense(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [B, L, D] in the shared space (unnormalised) and a bool mask [B, L], True = real token.

        Real tokens exclude padding and the start/end markers, so every True position is a word piece.
        """

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned inverse temperature (already exponentiated), a scalar tensor."""

    def describe(self) -> dict[str, Any]:
        """Provenance for result records: {"source", "arch", "objective", "dense_heads": {"global": str, "local": str}, ...}."""

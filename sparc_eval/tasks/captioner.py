"""A small Flamingo-style captioner on a frozen image-text backbone (the captioning runner's fitted head).

    patch tokens  [B, P, D] = model.encode_image_dense(images, head)        (frozen, no gradients)
    latents       [B, K, W] = PerceiverResampler(patch tokens)              K learned queries
    words                   = TransformerDecoder(words so far, cross-attending to the latents)

The decoder predicts words from a vocabulary built from the training captions, not the backbone's
tokenizer: the model contract has no detokenizer, a 49k-way BPE softmax would dominate the CPU cost,
and K-Precision counts whitespace words anyway. Weights and vocabulary are saved together as one
safetensors file (config and vocabulary in its string metadata), so loading runs no code.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import atomic_path

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_FORMAT = "sparc-eval captioner v1"
# Words are runs of letters/digits, apostrophes inside kept ("man's"); punctuation is dropped.
_WORD = re.compile(r"\w+(?:'\w+)*")


def words_of(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


class Vocabulary:
    """Special tokens first, then every training word seen at least `min_count` times, most frequent first."""

    def __init__(self, words: Sequence[str]):
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int) -> Vocabulary:
        counts = Counter(w for c in captions for w in words_of(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str, max_length: int) -> list[int]:
        """Word ids of the first `max_length` words, then EOS."""
        return [self.stoi.get(w, UNK) for w in words_of(caption)[:max_length]] + [EOS]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i > UNK:
                out.append(self.itos[i])
        return " ".join(out)


@dataclass(frozen=True)
class CaptionerConfig:
    in_dim: int  # width of the backbone's dense embeddings
    vocab_size: int
    width: int = 256
    heads: int = 4
    latents: int = 16
    resampler_layers: int = 2
    decoder_layers: int = 3
    max_length: int = 24  # words per caption, EOS excluded
    dropout: float = 0.1


class _ResamplerLayer(nn.Module):
    """Flamingo's Perceiver block: latents attend to [patch tokens; latents], then a feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm_x = nn.LayerNorm(width)
        self.norm_q = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(latents)
        kv = torch.cat([self.norm_x(x), q], dim=1)
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.in_dim, cfg.width)
        self.latents = nn.Parameter(torch.randn(cfg.latents, cfg.width) * cfg.width**-0.5)
        self.layers = nn.ModuleList(_ResamplerLayer(cfg.width, cfg.heads, cfg.dropout) for _ in range(cfg.resampler_layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.proj(patches)
        latents = self.latents.expand(x.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, x)
        return self.norm(latents)


class Captioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        self.resampler = PerceiverResampler(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=PAD)
        # Small init: the embedding is also the output layer, and unit-variance rows would start with huge logits.
        nn.init.normal_(self.embed.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.pos = nn.Parameter(torch.zeros(cfg.max_length + 1, cfg.width))
        layer = nn.TransformerDecoderLayer(
            cfg.width, cfg.heads, 4 * cfg.width, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers)
        self.norm = nn.LayerNorm(cfg.width)

    def logits(self, inputs: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Next-word logits [N, T, V] for input ids [N, T] (BOS first) given latents [N, K, W]."""
        t = inputs.shape[1]
        x = self.embed(inputs) + self.pos[:t]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=inputs.device), diagonal=1)
        padding = torch.zeros(inputs.shape, device=inputs.device).masked_fill(inputs == PAD, float("-inf"))
        x = self.decoder(x, latents, tgt_mask=causal, tgt_key_padding_mask=padding, tgt_is_causal=True)
        return self.norm(x) @ self.embed.weight.T  # output layer tied to the word embeddings

    def loss(
        self, patches: torch.Tensor, image_index: torch.Tensor, targets: torch.Tensor, normaliser: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy; targets [N, T] are word ids ending in EOS, PAD-filled; caption n describes image image_index[n].

        The mean over the batch's real target words, or their sum / `normaliser` (under DDP: the global batch's
        word count over the world size, so that DDP's mean over ranks is the global batch's mean).
        """
        latents = self.resampler(patches)[image_index]
        inputs = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
        inputs = inputs.masked_fill(inputs == EOS, PAD)  # EOS is never an input; the slot after it is padding
        logits = self.logits(inputs, latents)
        if normaliser is None:
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, reduction="sum") / normaliser

    forward = loss  # DistributedDataParallel hooks forward: a fit calls the (wrapped) captioner for its loss

    @torch.no_grad()
    def generate(self, patches: torch.Tensor) -> list[list[int]]:
        """Greedy decoding: word ids per image, at most max_length words, stopping at EOS."""
        latents = self.resampler(patches)
        n = latents.shape[0]
        seq = torch.full((n, 1), BOS, dtype=torch.long, device=latents.device)
        done = torch.zeros(n, dtype=torch.bool, device=latents.device)
        for _ in range(self.cfg.max_length):
            logits = self.logits(seq, latents)[:, -1].float()
            logits[:, [PAD, BOS, UNK]] = float("-inf")  # never emit padding, a start token or "<unk>"
            step = logits.argmax(-1).masked_fill(done, PAD)
            seq = torch.cat([seq, step[:, None]], dim=1)
            done |= step == EOS
            if bool(done.all()):
                break
        return [row[1:].tolist() for row in seq]


def pad_targets(sequences: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(sequences), max(map(len, sequences))), PAD, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.tensor(seq)
    return out


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero: the multiplier of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def save_captioner(path: Path, captioner: Captioner, vocab: Vocabulary, fit_info: dict) -> None:
    """Weights, config, vocabulary and a summary of the fit, in one safetensors file written atomically."""
    from safetensors.torch import save_file

    meta = {
        "format": _FORMAT,
        "config": json.dumps(asdict(captioner.cfg)),
        "vocabulary": json.dumps(vocab.itos),
        "fit": json.dumps(fit_info),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in captioner.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_captioner(path: Path) -> tuple[Captioner, Vocabulary, dict]:
    """A captioner saved by save_captioner; a SparcEvalError naming the file if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        vocab = Vocabulary(json.loads(meta["vocabulary"])[len(SPECIALS) :])
        captioner = Captioner(CaptionerConfig(**json.loads(meta["config"])))
        captioner.load_state_dict(state)
        fit_info = json.loads(meta["fit"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise SparcEvalError(f"cached captioner {path} cannot be loaded ({reason}); delete it to fit again") from None
    return captioner.eval(), vocab, fit_info

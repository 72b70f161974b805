"""`sparc-eval viz align`: where each caption token looks in the image (the SPARC paper's Fig. 1).

For a SPARC checkpoint the heat map is SPARC's own alignment weights (min-max normalised token-patch
similarities, entries below 1/P zeroed, renormalised: `sparc_alignment_weights`, with the checkpoint's
ablation options). Any other model has no such weights, so it gets a softmax over patches of
logit_scale x cosine(token, patch), and the figure says so.

When the image belongs to a SynthScenes tree (a `scenes.json` in one of its parent folders lists a
file of the same name), each panel outlines the object(s) its token describes: from the caption's
`mentions` when the caption is one of that image's captions, else by matching the token's word to
the objects' colour, shape (or its plural) and size. The title then says "hit" when the most-weighted
patch lies inside the outline and gives the share of the token's weight on it next to its chance
level (the outline's share of the image), as the grounding diagnostics define them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sparc_eval.errors import SparcEvalError

HEADS = ("local", "global")


# ------------------------------------------------------------------------------ weights


@dataclass
class Alignment:
    """Per real caption token: its text, the caption word it belongs to, its weights over the patch grid."""

    caption: str
    tokens: list[str]
    spans: list[tuple[int, int] | None]  # characters of the whole word the token is part of (None: unknown)
    weights: np.ndarray  # [L, gh, gw], each token's weights sum to 1
    input_size: tuple[int, int]  # (H, W) the model saw the image at
    method: str  # what the heat map is, for the figure title
    head: str


def token_texts(model, ids: list[int]) -> list[str]:
    """Each token id as text, through the model's open_clip BPE tokenizer (the only kind the loaders accept)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        raise SparcEvalError(f"model {model.describe().get('ref')} exposes no tokenizer that can spell its tokens")
    return [tokenizer.decode([i]).strip() for i in ids]


def word_spans(caption: str, token_row: torch.Tensor) -> dict[int, tuple[int, int]]:
    """Token position -> (start, end) of the caption word it encodes; empty when the model's tokenizer is not
    open_clip's BPE as `word_pieces` predicts it."""
    from sparc_eval.tasks.grounding import aligned_positions, word_pieces

    words = [(start, end) for start, end, _ in word_pieces(caption)]
    positions = aligned_positions(caption, token_row.cpu(), words)
    return {} if positions is None else {p: span for span, ps in zip(words, positions) for p in ps}


def compute_alignment(model, image: Image.Image, caption: str, head: str, device: torch.device) -> Alignment:
    """Token-to-patch weights of `caption` over `image` (squashed to the model's input, as the segmentation runner does)."""
    from sparc_eval.metrics.grounding import softmax_alignment_weights
    from sparc_eval.models.objectives import sparc_alignment_weights
    from sparc_eval.tasks.grounding import sparc_objective_flags
    from sparc_eval.tasks.segmentation import model_input_size

    if head not in HEADS:
        raise SparcEvalError(f"unknown dense head {head!r}; use {' or '.join(HEADS)}")
    h, w = model_input_size(model.preprocess)
    pixels = model.preprocess(image.resize((w, h), Image.BICUBIC))[None].to(device)
    tokens = model.tokenize([caption]).to(device)
    token_emb, mask = model.encode_text_dense(tokens)
    patch_emb, (gh, gw) = model.encode_image_dense(pixels, head=head)
    described = model.describe()
    flags = sparc_objective_flags(described)
    if flags is not None:
        weights = sparc_alignment_weights(token_emb.float(), patch_emb.float(), **flags)
        method = f"SPARC alignment weights ({flags['weights']}, {'1/P threshold' if flags['sparsity'] else 'no sparsity'})"
    else:
        weights = softmax_alignment_weights(token_emb.float(), patch_emb.float(), float(model.logit_scale))
        objective = described.get("objective")
        name = objective.get("name") if isinstance(objective, dict) else objective
        method = f"softmax over patches of logit_scale x cos(token, patch), not SPARC weights (objective: {name or 'unknown'})"
    positions = torch.nonzero(mask[0]).flatten().tolist()
    if not positions:
        raise SparcEvalError(f"caption {caption!r} has no tokens to show")
    spans = word_spans(caption, tokens[0])
    return Alignment(
        caption=caption,
        tokens=token_texts(model, tokens[0][positions].tolist()),
        spans=[spans.get(p) for p in positions],
        weights=weights[0][positions].reshape(-1, gh, gw).cpu().numpy(),
        input_size=(h, w),
        method=method,
        head=head,
    )


# ------------------------------------------------------------------------------ SynthScenes ground truth


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


@dataclass
class SceneTruth:
    """One SynthScenes image: its scenes.json record and its objects' masks (instance id -> bool [H, W])."""

    record: dict[str, Any]
    masks: dict[int, np.ndarray]

    @classmethod
    def find(cls, image_path: Path, size: tuple[int, int]) -> SceneTruth | None:
        """The SynthScenes record of `image_path` (size (W, H)): scenes.json in a parent folder, matched by file
        name (stem, so the tree's JPEG copies match too) and image size."""
        for parent in image_path.resolve().parents:
            scenes = parent / "scenes.json"
            if scenes.is_file():
                try:
                    images = json.loads(scenes.read_text(encoding="utf-8"))["images"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SparcEvalError(f"{scenes} is not a SynthScenes scenes.json") from None
                for record in images:
                    if Path(record["file_name"]).stem == image_path.stem and (record["width"], record["height"]) == size:
                        return cls(record, cls._load_masks(parent, record))
                return None
        return None

    @staticmethod
    def _load_masks(tree: Path, record: dict[str, Any]) -> dict[int, np.ndarray]:
        from pycocotools import mask as mask_utils

        path = tree / "coco" / "annotations" / f"instances_{record['split']}.json"
        try:
            annotations = json.loads(path.read_text(encoding="utf-8"))["annotations"]
        except (OSError, json.JSONDecodeError, KeyError):
            raise SparcEvalError(f"SynthScenes instance file {path} is missing or unreadable") from None
        return {
            a["id"]: mask_utils.decode(a["segmentation"]).astype(bool) for a in annotations if a["image_id"] == record["image_id"]
        }

    def caption_record(self, caption: str) -> dict[str, Any] | None:
        def norm(text: str) -> str:
            return text.strip().rstrip(".")

        return next((c for c in self.record["captions"] if norm(c["text"]) == norm(caption)), None)

    def instances(self, alignment: Alignment) -> tuple[list[list[int]], str]:
        """The instance ids each token describes, and how they were found."""
        found = self.caption_record(alignment.caption)
        if found is not None:
            return [
                sorted(
                    {
                        i
                        for m in found["mentions"]
                        if span and m["start"] < span[1] and span[0] < m["end"]
                        for i in m["instance_ids"]
                    }
                )
                for span in alignment.spans
            ], "the caption's mentions"
        out = []
        for span in alignment.spans:
            word = alignment.caption[span[0] : span[1]].lower() if span else None
            out.append(
                sorted(
                    o["instance_id"]
                    for o in self.record["objects"]
                    if word in (o["colour"], o["shape"], _plural(o["shape"]), o["size"])
                )
            )
        return out, "colour / shape / size words matched to the objects"


# ------------------------------------------------------------------------------ figure


def object_coverage(mask: np.ndarray, input_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Share of each patch [P] covered by `mask` [H, W], with the mask squashed to the model's input as the image was."""
    from sparc_eval.metrics.grounding import patch_coverage

    h, w = input_size
    squashed = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
    return patch_coverage(torch.from_numpy(np.asarray(squashed, dtype=np.float32) / 255.0), grid)


def draw_alignment(image: Image.Image, alignment: Alignment, truth: SceneTruth | None, out: Path) -> dict[str, Any]:
    """Write the figure to `out` (PNG, atomically); return a summary per token (pointing scores where outlined).

    Pointing scores are the grounding diagnostics' (`metrics.grounding.score_word`): hit = the most-weighted
    patch lies inside the outline (majority coverage), mass = the weight on the outline, with chance levels.
    """
    from matplotlib.figure import Figure

    from sparc_eval.fileio import atomic_path
    from sparc_eval.metrics.grounding import score_word

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    grid = alignment.weights.shape[1:]
    instances, source = truth.instances(alignment) if truth else ([[] for _ in alignment.tokens], None)
    n = len(alignment.tokens)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, rows * (2.6 * h / w + 0.4) + 0.8), dpi=110, layout="constrained")
    extent = (0, w, h, 0)
    summary = []
    for k, (tok, span, weights, ids) in enumerate(zip(alignment.tokens, alignment.spans, alignment.weights, instances)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(rgb, extent=extent, interpolation="nearest")
        ax.imshow(
            weights, extent=extent, cmap="inferno", alpha=0.6, vmin=0.0, vmax=float(weights.max()) or 1.0, interpolation="nearest"
        )
        ax.set_xticks([])
        ax.set_yticks([])
        entry: dict[str, Any] = {
            "token": tok,
            "word": alignment.caption[span[0] : span[1]] if span else None,
            "span": list(span) if span else None,
            "instance_ids": ids,
        }
        title, colour = tok, "black"
        if ids:
            union = np.any([truth.masks[i] for i in ids], axis=0)
            ax.contour(
                np.arange(w) + 0.5, np.arange(h) + 0.5, union.astype(float), levels=[0.5], colors=["#00e5ff"], linewidths=1.6
            )
            score = score_word(torch.from_numpy(weights).flatten(), object_coverage(union, alignment.input_size, grid))
            entry.update(hit=score.hit, hit_chance=score.inside_share, mass=score.mass, mass_chance=score.area_share)
            verdict = "hit" if score.hit == 1 else "miss" if score.hit == 0 else f"hit {score.hit:.0%} (tie)"
            title = f"{tok}  {verdict}\nmass {score.mass:.0%} (chance {score.area_share:.0%})"
            colour = "#0a8f2a" if score.hit >= 0.5 else "#c0392b"
        ax.set_title(title, fontsize=10, color=colour)
        summary.append(entry)
    truth_line = (
        f"outlines: objects each token describes, from {source}" if source else "no ground truth (not a SynthScenes image)"
    )
    fig.suptitle(
        f'"{alignment.caption}"\n{alignment.method}; head {alignment.head}; colour: each token\'s weights, 0 to its max\n{truth_line}',
        fontsize=9,
    )
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return {"out": str(out), "method": alignment.method, "head": alignment.head, "ground_truth": source, "tokens": summary}


def render_alignment(
    ckpt: str,
    image_path: str | Path,
    caption: str,
    out: str | Path,
    *,
    head: str = "local",
    device: str = "cpu",
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Load `ckpt`, compute the alignment of `caption` over the image, write the PNG; return the per-token summary."""
    from sparc_eval.data.common import open_image
    from sparc_eval.evaluation import resolve_device
    from sparc_eval.models.loaders import load_model

    caption = caption.strip()
    if not caption:
        raise SparcEvalError("--caption is empty")
    image_path = Path(image_path)
    if not image_path.is_file():
        raise SparcEvalError(f"image {image_path} does not exist")
    image = open_image(image_path)
    dev = resolve_device(device)
    model = load_model(ckpt, trust_pickle=trust_pickle).to(dev).eval()
    with torch.inference_mode():
        alignment = compute_alignment(model, image, caption, head, dev)
    return draw_alignment(image, alignment, SceneTruth.find(image_path, image.size), Path(out))

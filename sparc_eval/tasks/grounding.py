"""Fine-grained grounding diagnostics: do a caption's object words align with the patches of that object?

For every caption word that names an object (a mention: a character span with the instance ids it
describes) the runner takes the word's BPE token positions, the model's dense token and patch
embeddings (head from the card, default "local", the path SPARC's fine-grained loss aligns) and
scores the word's alignment weights against the object's mask (sparc_eval.metrics.grounding):
pointing accuracy, alignment mass on the object, and the sparsity of the weights, each with its
chance level. Two shortcut probes sit beside them: SPARC's fine-grained loss on matched vs mismatched
image-caption pairs (a content-blind model scores both alike), and the share of patch-embedding
variance explained by patch position alone. Definitions and figures: docs/grounding.md.

The sampling unit of the per-sample file is the image (words of one image are not independent), so
the regression gate's bootstrap resamples images with all their words and captions.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from sparc_eval.data.common import group_by, load_json
from sparc_eval.errors import SparcEvalError
from sparc_eval.metrics.grounding import (
    patch_coverage,
    position_r2,
    position_residuals,
    score_word,
    softmax_alignment_weights,
)
from sparc_eval.models.objectives import sparc_alignment_weights, sparc_fine_grained_loss
from sparc_eval.progress import track
from sparc_eval.tasks.runner import Runner, TaskOutput, resolve_root

WORD_AGGREGATION = (
    "a word of k BPE tokens is scored by the mean of its k tokens' alignment-weight rows (still a distribution); "
    "hit, mass and nnz are read from that row"
)
# A mask carried through the model's preprocess is an 8-bit image resized and centre-cropped, so its coverage
# values are multiples of 1/255: below half a step, no model-input pixel holds any of the object.
OUTSIDE_CROP_LEVEL = 0.5 / 255
EXCLUSIONS = (
    "mentions not scored: outside_crop = the object's mask, carried through the model's own resize and centre crop, "
    "covers no model-input pixel (a hit is impossible); crowd_only = the word's category has only crowd regions "
    "(iscrowd=1) in the image; crowd regions are never part of a word's target"
)
SOFTMAX_WEIGHTS = "softmax over patches of logit_scale * cos(token, patch) (model has no SPARC objective)"

# ------------------------------------------------------------------------------ mention sources
# A source returns {image_id: [{"text", "mentions": [{"start", "end", "word", "kind", "instance_ids"}]}]}
# for the images of the instances dataset; instance ids are annotation ids of its `coco` index.

MentionSource = Callable[[Path, Any], dict[int, list[dict]]]
MENTION_SOURCES: dict[str, MentionSource] = {}


def mention_source(name: str) -> Callable[[MentionSource], MentionSource]:
    def decorate(fn: MentionSource) -> MentionSource:
        MENTION_SOURCES[name] = fn
        return fn

    return decorate


@mention_source("scenes")
def scene_mentions(path: Path, dataset: Any) -> dict[int, list[dict]]:
    """SynthScenes' scenes.json: the generator's own record of which words describe which instances."""
    data = load_json(path, "scenes file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SparcEvalError(f"scenes file {path} has no 'images' list")
    wanted = set(dataset.image_ids)
    out = {int(img["image_id"]): img.get("captions", []) for img in data["images"] if img.get("image_id") in wanted}
    missing = sorted(wanted - set(out))
    if missing:
        raise SparcEvalError(f"scenes file {path} has no entry for image id {missing[0]} of {dataset.annotation}")
    for image_id, captions in out.items():
        for cap in captions:
            for m in cap.get("mentions", []):
                unknown = [i for i in m["instance_ids"] if i not in dataset.coco.anns]
                if unknown or not 0 <= m["start"] < m["end"] <= len(cap["text"]):
                    raise SparcEvalError(
                        f"scenes file {path}: mention {m.get('word')!r} of image {image_id} has a bad span or unknown instance id(s) {unknown}"
                    )
    return out


def _name_pattern(name: str) -> str:
    """A category name as whole words, any whitespace between them, an optional regular plural."""
    words = [re.escape(w) for w in name.split()]
    return r"(?<!\w)" + r"\s+".join(words) + r"(?:s|es)?(?!\w)"


@mention_source("category-words")
def category_word_mentions(path: Path, dataset: Any) -> dict[int, list[dict]]:
    """COCO captions JSON: the names of the categories present in the image, matched as whole words in
    its captions (regular plurals too; no synonyms: "man" does not match "person"). A word refers to
    every instance of its category in the image; overlapping matches keep the longest ("hot dog" over "dog")."""
    data = load_json(path, "captions file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SparcEvalError(f"captions file {path} has no 'annotations' list")
    captions = group_by(data["annotations"], "image_id")
    coco = dataset.coco
    patterns = {cid: re.compile(_name_pattern(cat["name"]), re.IGNORECASE) for cid, cat in coco.cats.items()}
    out: dict[int, list[dict]] = {}
    for image_id in dataset.image_ids:
        by_category = group_by(coco.imgToAnns.get(image_id, []), "category_id")
        out[image_id] = []
        for ann in captions.get(image_id, []):
            text = ann["caption"]
            found = [(m.start(), m.end(), cid) for cid in by_category for m in patterns[cid].finditer(text)]
            found.sort(key=lambda f: (f[0], f[0] - f[1]))
            mentions, last_end = [], -1
            for start, end, cid in found:
                if start >= last_end:
                    ids = [a["id"] for a in by_category[cid]]
                    mentions.append(
                        {"start": start, "end": end, "word": text[start:end], "kind": "category", "instance_ids": ids}
                    )
                    last_end = end
            out[image_id].append({"text": text, "mentions": mentions})
    return out


# ------------------------------------------------------------------------------ words -> tokens


@functools.lru_cache(maxsize=1)
def _bpe() -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def word_pieces(text: str) -> list[tuple[int, int, list[int]]]:
    """open_clip SimpleTokenizer's words of `text`, each as (start, end, BPE ids), offsets into `text` itself.

    The tokenizer splits its cleaned, lower-cased text with one regex and BPE-encodes each match; running
    the same regex over the raw text keeps character offsets (cleaning only collapses whitespace and
    lower-cases). `aligned_positions` checks the result against the model's own token ids.
    """
    tok = _bpe()
    pieces = []
    for m in tok.pat.finditer(text):
        unicode_bytes = "".join(tok.byte_encoder[b] for b in m.group().lower().encode("utf-8"))
        pieces.append((m.start(), m.end(), [tok.encoder[t] for t in tok.bpe(unicode_bytes).split(" ")]))
    return pieces


def aligned_positions(text: str, token_ids: torch.Tensor, spans: list[tuple[int, int]]) -> list[list[int]] | None:
    """Token positions (in the model's tokenized row `token_ids`) of each character span; None when the
    row does not start with the ids `word_pieces` predicts (another tokenizer, or text that cleaning alters).

    Position 0 is the start marker. A span whose tokens were cut off by the context length gets the
    positions that survive truncation (possibly none).
    """
    pieces = word_pieces(text)
    predicted = [i for _, _, ids in pieces for i in ids]
    room = token_ids.shape[0] - 2  # start and end markers
    kept = predicted[:room]
    if token_ids[1 : 1 + len(kept)].tolist() != kept:
        return None
    out = []
    for start, end in spans:
        positions, pos = [], 1
        for s, e, ids in pieces:
            if s < end and e > start:
                positions.extend(p for p in range(pos, pos + len(ids)) if p <= room)
            pos += len(ids)
        out.append(positions)
    return out


# ------------------------------------------------------------------------------ masks -> model pixels


class MaskProjector:
    """Carries a mask through the model's own `preprocess` (resize, crop, normalise), so it lands on the
    pixels the model sees; coverage in [0, 1] is recovered from the normalised values of an all-black
    and an all-white image of the same size."""

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor]):
        self.preprocess = preprocess
        self._refs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, mask: np.ndarray) -> torch.Tensor:
        size = (mask.shape[1], mask.shape[0])
        if size not in self._refs:
            lo = self.preprocess(Image.new("RGB", size, (0, 0, 0)))[0]
            hi = self.preprocess(Image.new("RGB", size, (255, 255, 255)))[0]
            if not bool((hi > lo).all()):
                raise SparcEvalError("the model's preprocess does not map white above black everywhere; masks cannot follow it")
            self._refs[size] = (lo, hi)
        lo, hi = self._refs[size]
        out = self.preprocess(Image.fromarray((mask > 0).astype(np.uint8) * 255).convert("RGB"))[0]
        return ((out - lo) / (hi - lo)).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------ runner


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def word_metrics(words: list[dict]) -> dict[str, float | None]:
    """Means over word records: pointing accuracy / mass with their chance levels, sparsity."""
    return {
        "pointing_acc": _mean([w["hit"] for w in words]),
        "pointing_chance": _mean([w["inside_share"] for w in words]),
        "mass_in_object": _mean([w["mass"] for w in words]),
        "mass_chance": _mean([w["area_share"] for w in words]),
        "nnz_patches": _mean([w["nnz"] for w in words]),
        "nnz_share": _mean([w["nnz"] / w["n_patches"] for w in words]),
    }


def sparc_objective_flags(described: dict[str, Any]) -> dict[str, Any] | None:
    """The alignment flags of the SPARC objective the model was trained with (from describe()), else None."""
    objective = described.get("objective")
    if isinstance(objective, dict) and objective.get("name") == "sparc":
        return {"sparsity": bool(objective.get("sparsity", True)), "weights": str(objective.get("weights", "sparse"))}
    return None


def pairwise_fine_loss(
    tok: torch.Tensor, mask: torch.Tensor, patch: torch.Tensor, scale: torch.Tensor, flags: dict
) -> list[float]:
    """SPARC's fine-grained loss of each (caption, image) pair on its own: tok [C, L, D], mask [C, L], patch [C, P, D] -> C values."""
    # One call per pair: the loss averages over the batch's real tokens, so a batched call mixes captions.
    # distributed=False: under torchrun each rank scores its own pairs; the loss must not reduce over ranks.
    return [
        float(sparc_fine_grained_loss(t[None], m[None], v[None], scale, **flags, distributed=False))
        for t, m, v in zip(tok, mask, patch)
    ]


def _set(rows: list[dict], key: str, values: list[float]) -> None:
    for row, value in zip(rows, values, strict=True):
        row[key] = value


def _collate(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]), "image_id": [it["image_id"] for it in items]}


class GroundingRunner(Runner):
    @dataclass
    class Params:
        mentions: str  # a MENTION_SOURCES name: where captions and their object words come from
        mentions_file: str  # scenes.json or a COCO captions JSON; may hold {data} / {synthscenes}
        head: Literal["local", "global"] = "local"
        kinds: list[str] | None = None  # mention kinds scored (e.g. colour, shape); None = all
        fine_loss: bool = True  # the matched / mismatched fine-grained-loss probe

    # None: no direction makes a model better (chance levels, raw losses a content-blind model also
    # drives down, sparsity); docs/grounding.md explains each.
    metrics = {
        "pointing_acc": True,
        "pointing_chance": None,
        "mass_in_object": True,
        "mass_chance": None,
        "nnz_patches": None,
        "nnz_share": None,
        "fine_loss_matched": None,
        "fine_loss_mismatched": None,
        "fine_loss_gap": True,
        "fine_loss_ratio": True,
        "position_r2": False,
    }

    @classmethod
    def check(cls, card, params) -> None:
        if params.mentions not in MENTION_SOURCES:
            raise SparcEvalError(
                f"task card {card.path}: unknown mentions source {params.mentions!r}; known: {', '.join(sorted(MENTION_SOURCES))}"
            )

    def evaluate(self, model: torch.nn.Module) -> TaskOutput:
        p = self.params
        base = self.open(self.card.dataset, transform=model.preprocess)
        if not hasattr(base, "coco"):
            raise SparcEvalError(f"task card {self.card.path}: the grounding runner needs a dataset of format coco-instances")
        mentions_path = resolve_root(self.card, dataclasses.replace(self.card.dataset, root=p.mentions_file), self.ctx.data_dir)
        captions = MENTION_SOURCES[p.mentions](mentions_path, base)
        dataset = self.ctx.shard(base)  # this rank's slice of the first `limit` images

        described = model.describe()
        trained_flags = sparc_objective_flags(described)
        is_sparc = trained_flags is not None
        # The fine-loss probe uses the model's own SPARC flags, or the paper's defaults for other models.
        sparc_flags = trained_flags or {"sparsity": True, "weights": "sparse"}
        scale = model.logit_scale.detach().float()
        project = MaskProjector(model.preprocess)

        samples, patches_seen = [], []
        stats = {"mentions": 0, "truncated": 0, "outside_crop": 0, "crowd_only": 0, "captions": 0, "unaligned_captions": 0}
        # Mismatched pairs roll by one over the evaluation order: image k's captions meet image k+1's patches
        # (the last image's meet the first's). The captions of a batch's last image wait for the next batch.
        waiting: tuple[list[dict], torch.Tensor, torch.Tensor] | None = None  # fine-loss rows, their token emb and mask
        first_patch = None
        for batch in track(self.ctx.loader(dataset, _collate), "grounding"):
            with self.ctx.autocast():
                patch, grid = model.encode_image_dense(self.ctx.to_device(batch["image"]), head=p.head)
            patch = patch.float()
            patches_seen.append(patch.cpu())
            first_patch = patch[0] if first_patch is None else first_patch
            if waiting is not None:
                rows, tok, tmask = waiting
                _set(rows, "mismatched", pairwise_fine_loss(tok, tmask, patch[0].expand(len(rows), -1, -1), scale, sparc_flags))
                waiting = None
            caps_per_image = [captions.get(image_id, []) for image_id in batch["image_id"]]
            records = [{"image_id": i, "words": [], "fine_loss": []} for i in batch["image_id"]]
            samples.extend(records)
            owner = torch.tensor(
                [b for b, caps in enumerate(caps_per_image) for _ in caps], dtype=torch.long, device=patch.device
            )
            if not len(owner):
                continue
            # One text-encoder call per batch; each caption is aligned with its own image's patches.
            tokens, tok, tmask = self._encode_text(model, [c["text"] for caps in caps_per_image for c in caps])
            if is_sparc:
                weights = sparc_alignment_weights(tok, patch[owner], **sparc_flags)
            else:
                weights = softmax_alignment_weights(tok, patch[owner], scale)
            start = 0
            for record, caps in zip(records, caps_per_image):
                rows = slice(start, start + len(caps))
                start = rows.stop
                record["words"] = self._score_words(caps, tokens[rows], tmask[rows], weights[rows], base, project, grid, stats)
            if not p.fine_loss:
                continue
            rows = [{"caption": c, "matched": None, "mismatched": None} for caps in caps_per_image for c in range(len(caps))]
            for row, b in zip(rows, owner.tolist()):
                records[b]["fine_loss"].append(row)
            _set(rows, "matched", pairwise_fine_loss(tok, tmask, patch[owner], scale, sparc_flags))
            inner = (owner + 1 < len(records)).tolist()
            here = [i for i, keep in enumerate(inner) if keep]
            _set(
                [rows[i] for i in here],
                "mismatched",
                pairwise_fine_loss(tok[here], tmask[here], patch[owner[here] + 1], scale, sparc_flags),
            )
            last = [i for i, keep in enumerate(inner) if not keep]
            waiting = ([rows[i] for i in last], tok[last], tmask[last]) if last else None
        # Under torchrun the last image's captions meet the next rank's first image (the first rank's after the last).
        world = self.ctx.world
        heads = self.ctx.gather([(world.rank, first_patch.cpu(), list(grid))] if first_patch is not None else [])
        n_images = sum(self.ctx.gather([len(samples)]))  # every rank takes part in each collective
        if waiting is not None and n_images > 1:
            rows, tok, tmask = waiting
            following = next((head for rank, head, _ in heads if rank > world.rank), heads[0][1]).to(tok.device)
            _set(rows, "mismatched", pairwise_fine_loss(tok, tmask, following.expand(len(rows), -1, -1), scale, sparc_flags))

        local = torch.cat(patches_seen).double() if patches_seen else None
        means = None
        if world.distributed:  # the position and grand means of the whole split, from every rank's sums
            parts = self.ctx.gather([(local.sum(dim=0), len(local))] if local is not None else [])
            total_sum, count = sum(part for part, _ in parts), sum(n for _, n in parts)
            means = (total_sum / count, total_sum.sum(dim=0) / (count * total_sum.shape[0]))
        if local is not None:
            within, total = position_residuals(local, means)
            for record, w, t in zip(samples, within.tolist(), total.tolist()):
                record["position_within"], record["position_total"] = w, t
        samples = self.ctx.gather(samples)
        stats = {key: sum(part[key] for part in self.ctx.gather([stats])) for key in stats}
        grid = heads[0][2] if heads else None
        metrics = self.aggregate(samples, p)
        words = [w for s in samples for w in s["words"]]
        info = {
            "head": p.head,
            "head_path": described.get("dense_heads", {}).get(p.head),
            "alignment_weights": f"sparc_alignment_weights({sparc_flags})" if is_sparc else SOFTMAX_WEIGHTS,
            "word_aggregation": WORD_AGGREGATION,
            "inside_rule": "a patch is inside an object when the mask covers at least half of its pixels (after the model's preprocess)",
            "fine_loss_probe": {
                "loss": f"sparc_fine_grained_loss({sparc_flags}) per caption, inverse temperature = model logit_scale",
                "inv_temperature": float(scale),
                "mismatched": "the captions of image k with the patches of image k+1 in evaluation order (rolled by one; the last image's with the first's)",
            }
            if p.fine_loss
            else None,
            "position_r2": "1 - sum |x_np - mean_p|^2 / sum |x_np - mean|^2 over the evaluated images' patch embeddings",
            "mentions": {"source": p.mentions, "file": str(mentions_path), "kinds": p.kinds, "scored": len(words), **stats},
            "exclusions": EXCLUSIONS,
            "patch_grid": grid,
            "by_kind": {k: word_metrics([w for w in words if w["kind"] == k]) for k in sorted({w["kind"] for w in words})},
        }
        return TaskOutput(metrics=metrics, samples=samples, n_samples=len(samples), info=info)

    def _score_words(self, caps, tokens, tmask, weights, base, project, grid, stats) -> list[dict]:
        out, coverage_cache = [], {}
        for c, cap in enumerate(caps):
            stats["captions"] += 1
            wanted = [m for m in cap.get("mentions", []) if self.params.kinds is None or m["kind"] in self.params.kinds]
            if not wanted:
                continue
            positions = aligned_positions(cap["text"], tokens[c], [(m["start"], m["end"]) for m in wanted])
            if positions is None:
                stats["unaligned_captions"] += 1
                continue
            for m, pos in zip(wanted, positions):
                stats["mentions"] += 1
                if not pos or not bool(tmask[c, pos].all()):
                    stats["truncated"] += 1
                    continue
                # Crowd regions (iscrowd=1) are never pointing targets; a word with only crowd regions is not scored.
                key = tuple(sorted(i for i in m["instance_ids"] if not base.coco.anns[i].get("iscrowd", 0)))
                if not key:
                    stats["crowd_only"] += 1
                    continue
                if key not in coverage_cache:
                    union = np.zeros_like(base.coco.annToMask(base.coco.anns[key[0]]))
                    for iid in key:
                        union |= base.coco.annToMask(base.coco.anns[iid])
                    projected = project(union)
                    inside_crop = float(projected.max()) >= OUTSIDE_CROP_LEVEL
                    coverage_cache[key] = patch_coverage(projected, grid) if inside_crop else None
                if coverage_cache[key] is None:
                    stats["outside_crop"] += 1  # the object lies wholly outside the evaluated crop: no hit is possible
                    continue
                score = score_word(weights[c, pos].mean(dim=0).cpu(), coverage_cache[key])
                out.append(
                    {
                        "caption": c,
                        "word": m["word"],
                        "kind": m["kind"],
                        "start": m["start"],
                        "end": m["end"],
                        "instance_ids": list(key),
                        "token_positions": pos,
                        "n_patches": int(weights.shape[-1]),
                        **dataclasses.asdict(score),
                    }
                )
        return out

    def _encode_text(self, model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids [C, L], dense token embeddings [C, L, D] (float32) and the real-token mask [C, L]."""
        tokens = model.tokenize(texts)
        with self.ctx.autocast():
            tok, mask = model.encode_text_dense(tokens.to(self.ctx.device))
        return tokens, tok.float(), mask

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: Any) -> dict[str, float | None]:
        words = [w for s in samples for w in s["words"]]
        losses = [f for s in samples for f in s["fine_loss"]]
        matched = _mean([f["matched"] for f in losses])
        mismatched = _mean([f["mismatched"] for f in losses if f["mismatched"] is not None])
        within = sum(s["position_within"] for s in samples)
        total = sum(s["position_total"] for s in samples)
        return {
            **word_metrics(words),
            "fine_loss_matched": matched,
            "fine_loss_mismatched": mismatched,
            "fine_loss_gap": None if matched is None or mismatched is None else mismatched - matched,
            "fine_loss_ratio": None if matched is None or mismatched is None or matched == 0 else mismatched / matched,
            "position_r2": position_r2(within, total) if len(samples) > 1 else None,
        }

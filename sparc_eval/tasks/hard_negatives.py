"""Hard-negative caption tests ("hard_negatives"): does the image score its true caption above minimally
changed false ones? (SugarCrepe, Hsieh et al. 2023; SynthScenes' binding, relation and counting negatives.)

Each entry of the dataset is one image, one positive caption and one or more negative captions of one type
(replace_att, attribute_swap, ...). The model is right when the positive's score is strictly above every
negative's: a tie counts as wrong (identical captions after tokenisation, e.g. a change cut off by the
context length, can never be right). The score is the model's own image-text similarity: the cosine of the
L2-normalised global embeddings (what CLIP's logits are, up to its positive temperature), in float64.

Metrics, per type T the card's reader lists: `acc_T` (share of T's entries answered right) and `chance_T`
(the share a random guess gets, the mean of 1 / number of candidates: 0.5 with one negative), and their
unweighted means over the types present, `acc_mean` and `chance_mean`. Chance is descriptive (no better
direction). The declared metrics are the union of the built-in types, SugarCrepe's seven and SynthScenes' six;
a record holds those of its card's types only (`card_metrics`).

Per-sample records carry `acc_T` (0/1) under the metric's name, so `sparc-eval regress` pairs them by `id`
(`<type>/<entry id>`) and runs the exact McNemar test on each type; `acc_mean` goes to the paired bootstrap
through `aggregate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sparc_eval.data.sugarcrepe import SUGARCREPE_TYPES
from sparc_eval.data.synth_negatives import NEGATIVE_TYPES as SYNTH_TYPES
from sparc_eval.errors import SparcEvalError
from sparc_eval.tasks.card import TaskCard
from sparc_eval.tasks.runner import Runner, TaskOutput, require_finite

TYPES = (*SUGARCREPE_TYPES, *SYNTH_TYPES)


@dataclass
class HardNegativesParams:
    """No protocol knobs: every entry of every type the reader lists is scored."""


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([item["image"] for item in items])}


def entry_correct(positive_score: float, negative_scores: list[float]) -> bool:
    """Right only when the positive beats every negative strictly (ties count as wrong)."""
    return all(positive_score > s for s in negative_scores)


class HardNegativesRunner(Runner):
    family = "fine-grained understanding"
    Params = HardNegativesParams
    metrics = {
        "acc_mean": True,
        "chance_mean": None,
        **{name: higher for t in TYPES for name, higher in ((f"acc_{t}", True), (f"chance_{t}", None))},
    }

    @classmethod
    def card_metrics(cls, card: TaskCard) -> dict[str, bool | None]:
        """The mean and the pair of each type the card lists (a SynthScenes record has no SugarCrepe columns)."""
        types = card.dataset.options.get("types", SUGARCREPE_TYPES)
        names = ("acc_mean", "chance_mean", *(f"{kind}_{t}" for t in types for kind in ("acc", "chance")))
        return {name: cls.metrics[name] for name in names if name in cls.metrics}

    @classmethod
    def check(cls, card: TaskCard, params: Any) -> None:
        types = card.dataset.options.get("types", SUGARCREPE_TYPES)
        unknown = [t for t in types if t not in TYPES]
        if unknown:
            raise SparcEvalError(
                f"task card {card.path}: negative type {unknown[0]!r} has no metric of the hard_negatives runner "
                f"(known types: {', '.join(TYPES)})"
            )

    def evaluate(self, model: torch.nn.Module) -> TaskOutput:
        base = self.open(self.card.dataset, transform=model.preprocess)
        dataset = self.ctx.limited(base)
        images = F.normalize(
            self.ctx.image_features(model, dataset, model.encode_image, "image", model.preprocess, collate_fn=_collate), dim=-1
        )
        require_finite(images, "image", model)
        entries = [(row, entry) for row in range(len(dataset)) for entry in base.entries[row]]
        texts = list(dict.fromkeys(t for _, e in entries for t in (e["positive"], *e["negatives"])))
        captions = F.normalize(self.ctx.text_features(model, texts, model.encode_text, "text"), dim=-1)
        require_finite(captions, "caption", model)

        text_index = {t: i for i, t in enumerate(texts)}
        images64, captions64 = images.double(), captions.double()
        samples = []
        rows = self.ctx.world.shard(len(entries))  # this rank scores its slice; the records are gathered in order
        for row, entry in entries[rows.start : rows.stop]:
            candidates = [text_index[entry["positive"]], *(text_index[n] for n in entry["negatives"])]
            scores = (captions64[candidates] @ images64[row]).tolist()
            right = int(entry_correct(scores[0], scores[1:]))
            samples.append(
                {
                    "id": entry["id"],
                    "type": entry["type"],
                    "image": str(base.paths[row]),
                    "positive": entry["positive"],
                    "negatives": entry["negatives"],
                    "positive_score": scores[0],
                    "negative_scores": scores[1:],
                    "n_candidates": len(candidates),
                    "correct": right,
                    f"acc_{entry['type']}": right,  # named like the metric: regress runs McNemar on it
                }
            )
        samples = self.ctx.gather(samples)
        counts: dict[str, int] = {}
        for s in samples:
            counts[s["type"]] = counts.get(s["type"], 0) + 1
        info = {
            "n_images": len(images),
            "n_entries": counts,
            "n_ties": sum(any(n == s["positive_score"] for n in s["negative_scores"]) for s in samples),
            "protocol": "image-to-text: right when the positive caption's score is strictly above every negative's",
            "ties": "a negative scoring exactly as the positive counts as wrong",
            "similarity": "cosine of the L2-normalised global embeddings, float64",
            "chance": "mean over entries of 1 / (1 + number of negatives)",
        }
        return TaskOutput(self.aggregate(samples, self.params), samples, len(samples), info)

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: Any) -> dict[str, float | None]:
        by_type: dict[str, list[dict[str, Any]]] = {}
        for s in samples:
            by_type.setdefault(s["type"], []).append(s)
        metrics: dict[str, float | None] = {name: None for name in cls.metrics}
        for t, rows in by_type.items():
            metrics[f"acc_{t}"] = sum(r["correct"] for r in rows) / len(rows)
            metrics[f"chance_{t}"] = sum(1 / r["n_candidates"] for r in rows) / len(rows)
        if by_type:
            metrics["acc_mean"] = sum(metrics[f"acc_{t}"] for t in by_type) / len(by_type)  # type: ignore[misc]
            metrics["chance_mean"] = sum(metrics[f"chance_{t}"] for t in by_type) / len(by_type)  # type: ignore[misc]
        return metrics

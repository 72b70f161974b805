"""Zero-shot image-text retrieval ("retrieval"): image->text and text->image recall@1/5/10.

Every image of the split is a query against every caption (image->text: found when ANY of its captions
is in the top k), and every caption against every image (text->image). Ranks come from
sparc_eval.metrics.retrieval: the similarity matrix is taken in blocks, and ties count against the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sparc_eval.metrics.retrieval import recall_at_k, retrieval_ranks
from sparc_eval.tasks.runner import Runner, TaskOutput, require_finite

KS = (1, 5, 10)
# Side of one block of the similarity matrix: memory for scoring is O(SCORE_CHUNK^2), whatever the split size.
SCORE_CHUNK = 2048


@dataclass
class RetrievalParams:
    """Retrieval has no protocol knobs: all captions of every image of the split are used."""


class RetrievalRunner(Runner):
    family = "retrieval"
    Params = RetrievalParams
    metrics = {**{f"i2t_r{k}": True for k in KS}, **{f"t2i_r{k}": True for k in KS}}

    def evaluate(self, model: torch.nn.Module) -> TaskOutput:
        base = self.open(self.card.dataset, transform=model.preprocess)
        dataset = self.ctx.limited(base)
        # Every rank encodes its slice of the images and captions; all hold the gathered embeddings and rank alike.
        image_emb = F.normalize(self.ctx.image_features(model, dataset, model.encode_image, "image", model.preprocess), dim=-1)
        images: list[dict[str, Any]] = []
        captions: list[dict[str, Any]] = []
        text_image: list[int] = []
        for i in range(len(dataset)):
            image_id, caps = base.image_ids[i], base.captions[i]
            text_image.extend([i] * len(caps))
            images.append({"image_id": image_id, "path": str(base.paths[i]), "n_captions": len(caps)})
            captions.extend({"id": f"caption/{image_id}/{j}", "image_id": image_id, "caption": c} for j, c in enumerate(caps))
        text_emb = F.normalize(self.ctx.text_features(model, [c["caption"] for c in captions], model.encode_text, "text"), dim=-1)
        require_finite(image_emb, "image", model)
        require_finite(text_emb, "caption", model)

        dev = self.ctx.device
        image_ranks, text_ranks = retrieval_ranks(
            image_emb.to(dev), text_emb.to(dev), torch.tensor(text_image, device=dev), chunk=SCORE_CHUNK
        )
        samples: list[dict[str, Any]] = []
        for img, rank in zip(images, image_ranks.tolist()):
            samples.append(
                {
                    "kind": "image",
                    "id": f"image/{img['image_id']}",
                    **img,
                    "rank": rank,
                    **{f"i2t_r{k}": int(rank <= k) for k in KS},
                }
            )
        for caption, rank in zip(captions, text_ranks.tolist()):
            samples.append({"kind": "caption", **caption, "rank": rank, **{f"t2i_r{k}": int(rank <= k) for k in KS}})
        info = {
            "n_images": len(images),
            "n_captions": len(captions),
            "protocol": "image->text: found if any of the image's captions is in the top k; text->image: its image in the top k",
            "ties": "a negative tied with the best positive ranks above it",
            "similarity": f"cosine, float64 dot products rounded to float32, in blocks of {SCORE_CHUNK}x{SCORE_CHUNK}",
        }
        return TaskOutput(self.aggregate(samples, self.params), samples, len(images), info)

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: Any) -> dict[str, float | None]:
        image_ranks = [s["rank"] for s in samples if s["kind"] == "image"]
        text_ranks = [s["rank"] for s in samples if s["kind"] == "caption"]
        return {
            **{f"i2t_r{k}": recall_at_k(image_ranks, k) for k in KS},
            **{f"t2i_r{k}": recall_at_k(text_ranks, k) for k in KS},
        }

"""Zero-shot classification ("classification"): top-1, top-5 and mean per-class recall.

Each class is scored by the cosine similarity of the image embedding to its prompt-ensemble text
embedding (best synonym when a class name lists several). Metrics follow CLIP_benchmark, with ties
counted against the model (sparc_eval.metrics.classification).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sparc_eval.metrics.classification import accuracy, hits_at_k, label_ranks, mean_per_class_recall
from sparc_eval.tasks.prompts import (
    best_synonym_scores,
    class_text_embeddings,
    classname_file,
    flatten_synonyms,
    resolve_templates,
    split_synonyms,
)
from sparc_eval.tasks.runner import Runner, TaskOutput, require_finite, resolve_root

TOP_K = 5


@dataclass
class ClassificationParams:
    # A template set name (openai-imagenet, simple) or a template file (relative to the dataset root).
    templates: str = "simple"
    # A built-in class-name list (imagenet) used in place of the dataset's class-name file.
    classnames: str | None = None


class ClassificationRunner(Runner):
    family = "zero-shot classification"
    Params = ClassificationParams
    metrics = {"top1": True, "top5": True, "mean_per_class_recall": True}

    @classmethod
    def dataset_options(cls, params: ClassificationParams) -> dict[str, Any]:
        """A built-in class-name list (params.classnames) replaces the dataset's class-name file."""
        return {"classnames": str(classname_file(params.classnames))} if params.classnames else {}

    def evaluate(self, model: torch.nn.Module) -> TaskOutput:
        spec = self.card.dataset
        base = self.open(spec, transform=model.preprocess)
        root = resolve_root(self.card, spec, self.ctx.data_dir)
        templates = resolve_templates(self.params.templates, root)
        classnames = [split_synonyms(name, f"dataset {root}") for name in base.classnames]
        names, owners = flatten_synonyms(classnames)
        text = class_text_embeddings(model, names, templates, self.ctx)
        require_finite(text, "class text", model)

        num_classes = len(classnames)
        k = min(TOP_K, num_classes)
        samples: list[dict[str, Any]] = []
        dataset = self.ctx.limited(base)
        images = F.normalize(self.ctx.image_features(model, dataset, model.encode_image, "image", model.preprocess), dim=-1)
        require_finite(images, "image", model)
        rows = self.ctx.world.shard(len(images))  # this rank scores its slice; the records are gathered in order
        for start in range(rows.start, rows.stop, self.ctx.batch_size):
            index = range(start, min(start + self.ctx.batch_size, rows.stop))
            scores = best_synonym_scores(self.ctx.to_device(images[index.start : index.stop]) @ text.T, owners, num_classes).cpu()
            labels = torch.tensor([base.targets[i] for i in index], dtype=torch.long)
            ranks = label_ranks(scores, labels).tolist()
            top1, top5 = hits_at_k(ranks, 1), hits_at_k(ranks, TOP_K)
            # Ties in the listed predictions go to the lower class index; `rank` counts them against the model.
            top = scores.sort(dim=1, descending=True, stable=True).indices[:, :k].tolist()
            paths = [str(base.paths[i]) for i in index]
            for i, (path, label, rank, pred) in enumerate(zip(paths, labels.tolist(), ranks, top)):
                samples.append(
                    {
                        "id": _relative(path, root),
                        "path": path,
                        "label": label,
                        "class": classnames[label][0],
                        "predictions": pred,
                        "rank": rank,
                        "top1": top1[i],
                        "top5": top5[i] if num_classes >= TOP_K else None,
                    }
                )
        samples = self.ctx.gather(samples)
        info = {
            "classnames": self.params.classnames or "dataset class-name file",
            "n_classes": num_classes,
            "templates": self.params.templates,
            "n_templates": len(templates),
            "ensemble": "mean of L2-normalised prompt embeddings, renormalised; best synonym per class",
            "ties": "a class tied with the label ranks above it",
        }
        return TaskOutput(self.aggregate(samples, self.params), samples, len(samples), info)

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: Any) -> dict[str, float | None]:
        top1 = [s["top1"] for s in samples]
        top5 = [s["top5"] for s in samples]
        return {
            "top1": accuracy(top1),
            "top5": None if any(h is None for h in top5) else accuracy(top5),
            "mean_per_class_recall": mean_per_class_recall([s["label"] for s in samples], top1),
        }


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path

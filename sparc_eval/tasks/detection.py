"""Open-vocabulary detection, OWL-ViT style (Minderer et al. 2022): heads fitted on the card's
`fit_dataset`, queried with class-name text embeddings, scored with COCOeval or federated LVISEval.

Heads read `model.encode_image_dense(images, head=params.dense_head)`: the model contract exposes
patch embeddings only in the shared image-text space (not raw backbone features), and that space is
what SPARC's fine-grained loss trains, so it is the representation under test for every loader alike.

Images are padded to a square (bottom / right, CLIP's mean colour) before the model's own
preprocessing, so a resize-and-centre-crop preprocess keeps the whole image and boxes stay in image
coordinates.

At fit time the queries are the categories that have boxes in the fit set; at evaluation they are
ALL categories of the evaluation set. On SynthScenes the rare ("r") shape-colour combinations never
occur in train, so APr measures true open-vocabulary transfer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import atomic_path, write_json_atomic
from sparc_eval.metrics.detection import coco_box_metrics, lvis_box_metrics
from sparc_eval.progress import make_progress, track
from sparc_eval.tasks.card import DatasetSpec
from sparc_eval.tasks.detection_head import LossWeights, OwlHead, Target, detection_losses, hungarian_match, top_k_detections
from sparc_eval.tasks.feature_cache import transform_id
from sparc_eval.tasks.prompts import class_text_embeddings, resolve_templates
from sparc_eval.tasks.runner import Runner, TaskOutput, resolve_root

# Which attribute of an opened dataset holds its annotation API (both keep the raw JSON in `.dataset`).
_ANNOTATION_API = {"coco-instances": "coco", "lvis": "lvis_api"}
_EVALUATORS = {
    "coco": (coco_box_metrics, "pycocotools COCOeval (bbox, 100 detections per image and category)"),
    "lvis": (lvis_box_metrics, "lvis LVISEval (bbox, federated, 300 detections per image)"),
}
_LVIS_MAX_DETS = 300
PAD_RGB = (123, 117, 104)  # CLIP's mean colour, so padding is close to zero after normalisation
HEAD_FILE = "detection_head.safetensors"
BACKBONE_FILE = "detection_backbone.safetensors"


@dataclass
class Params:
    templates: str = "simple"  # a prompts.TEMPLATE_SETS name or a template file (relative: to the dataset root)
    dense_head: Literal["global", "local"] = "local"
    protocol: Literal["coco", "lvis"] = "coco"  # lvis: the official federated evaluation (LVIS-format data)
    top_k: int = 100  # detections kept per image: the highest-scoring (patch, class) pairs
    # Frequency groups left out of fitting (no queries, no targets): ["r"] is OWL-ViT's open-vocabulary LVIS-base set-up.
    holdout_frequencies: list[str] = dataclasses.field(default_factory=list)
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    train_backbone: bool = False  # fine-tune the model too (image side at backbone_lr, text side at text_lr)
    backbone_lr: float = 1e-5
    text_lr: float = 1e-6
    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def pad_to_square(image: Image.Image) -> Image.Image:
    side = max(image.size)
    if image.size == (side, side):
        return image
    canvas = Image.new("RGB", (side, side), PAD_RGB)
    canvas.paste(image, (0, 0))
    return canvas


def _padded_preprocess(preprocess, image: Image.Image) -> torch.Tensor:
    return preprocess(pad_to_square(image))


def _collate(items: list[dict]) -> dict[str, Any]:
    return {"image": torch.stack([item["image"] for item in items]), "image_id": [item["image_id"] for item in items]}


def _epochs(batches, epochs: int):
    """This rank's index batches of every epoch, in order."""
    for _ in range(epochs):
        yield from batches


class _BackboneAndHead(torch.nn.Module):
    """The model and the detection head as one module (train_backbone), so that one DDP wrapper averages both's gradients."""

    def __init__(self, model: torch.nn.Module, head: OwlHead):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, images: torch.Tensor, dense_head: str, queries) -> tuple[torch.Tensor, torch.Tensor]:
        dense, _ = self.model.encode_image_dense(images, head=dense_head)
        return self.head(dense.float(), queries())


@dataclass
class GroundTruth:
    """A detection set's annotations, indexed by image id, from the reader's annotation API."""

    images: dict[int, dict]
    annotations: dict[int, list[dict]]
    categories: list[dict]
    source: str

    def __post_init__(self) -> None:
        self.frequency = {c["id"]: c.get("frequency") for c in self.categories}

    @classmethod
    def of(cls, dataset, spec: DatasetSpec) -> GroundTruth:
        if spec.format not in _ANNOTATION_API:
            raise SparcEvalError(f"detection needs a dataset of format {' or '.join(_ANNOTATION_API)}, not {spec.format!r}")
        raw = getattr(dataset, _ANNOTATION_API[spec.format]).dataset
        source = str(dataset.annotation)
        annotations: dict[int, list[dict]] = defaultdict(list)
        for ann in raw["annotations"]:  # boxes were checked by the reader (data/annotations.py)
            annotations[ann["image_id"]].append(ann)
        return cls({img["id"]: img for img in raw["images"]}, annotations, list(raw["categories"]), source)

    def targets(self, image_id: int, class_index: dict[int, int]) -> Target:
        """Training boxes of one image: crowd regions and categories outside the queries left out, boxes
        clipped to the image (a box with no area left cannot be regressed and is skipped), cxcywh / padded side."""
        img = self.images[image_id]
        width, height = img["width"], img["height"]
        side = max(width, height)
        labels, boxes = [], []
        for ann in self.annotations.get(image_id, []):
            if ann.get("iscrowd", 0) or ann["category_id"] not in class_index:
                continue
            x, y, w, h = ann["bbox"]
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                continue
            labels.append(class_index[ann["category_id"]])
            boxes.append([(x0 + x1) / 2 / side, (y0 + y1) / 2 / side, (x1 - x0) / side, (y1 - y0) / side])
        return Target(torch.tensor(labels, dtype=torch.long), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))

    def sample_ground_truth(self, image_id: int, protocol: str) -> dict[str, Any]:
        """The per-sample record's ground truth: what COCOeval / LVISEval read of each annotation and image."""
        anns = self.annotations.get(image_id, [])
        img = self.images[image_id]
        out: dict[str, Any] = {
            "image_id": image_id,
            "width": img["width"],
            "height": img["height"],
            "ground_truth": {
                "boxes": [list(map(float, a["bbox"])) for a in anns],
                "category_ids": [a["category_id"] for a in anns],
                # COCOeval's area ranges use the annotation's area (the mask's), not the box's.
                "areas": [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns],
                "iscrowd": [int(a.get("iscrowd", 0)) for a in anns],
                "frequencies": [self.frequency[a["category_id"]] for a in anns],
            },
        }
        if protocol == "lvis":
            out["neg_category_ids"] = list(img["neg_category_ids"])
            out["not_exhaustive_category_ids"] = list(img["not_exhaustive_category_ids"])
        return out

    def require_lvis_fields(self) -> None:
        for img in self.images.values():
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                if key not in img:
                    raise SparcEvalError(
                        f"image {img['id']} in {self.source} has no {key!r}; protocol 'lvis' needs LVIS-format annotations"
                    )
        for cat in self.categories:
            if cat.get("frequency") not in ("r", "c", "f"):
                raise SparcEvalError(
                    f"category {cat['id']} in {self.source} has frequency {cat.get('frequency')!r}; protocol 'lvis' needs r, c or f"
                )


def classname(category: dict) -> str:
    """The query name of a category: LVIS writes 'aerosol_can'."""
    return str(category["name"]).replace("_", " ")


def samples_to_coco(samples: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO-format ground truth and results rebuilt from per-sample records.

    Image ids are the sample positions (1..N), so a bootstrap resample that repeats an image keeps the
    copies apart; annotation ids are 1..M (COCOeval treats id 0 as 'unmatched'). Categories are those
    with ground truth: a category without any has no AP in either evaluator, so nothing changes.
    """
    images, annotations, detections, frequency = [], [], [], {}
    for image_id, sample in enumerate(samples, start=1):
        image = {"id": image_id, "width": sample["width"], "height": sample["height"]}
        if "neg_category_ids" in sample:
            image["neg_category_ids"] = sample["neg_category_ids"]
            image["not_exhaustive_category_ids"] = sample["not_exhaustive_category_ids"]
        images.append(image)
        gt = sample["ground_truth"]
        for box, cat, area, crowd, freq in zip(gt["boxes"], gt["category_ids"], gt["areas"], gt["iscrowd"], gt["frequencies"]):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": box,
                    "area": area,
                    "iscrowd": crowd,
                }
            )
            frequency[cat] = freq
        det = sample["detections"]
        for box, cat, score in zip(det["boxes"], det["category_ids"], det["scores"]):
            detections.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
    categories = [{"id": cat, **({"frequency": freq} if freq is not None else {})} for cat, freq in sorted(frequency.items())]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _text_side_parameters(model: torch.nn.Module) -> set[int]:
    """Ids of the parameters the text path uses, found by a backward pass through encode_text."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model.encode_text(model.tokenize(["a photo of a thing."]).to(next(model.parameters()).device)).sum().backward()
    used = {id(p) for p in model.parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return used


class DetectionRunner(Runner):
    family = "detection"
    Params = Params
    metrics = {name: True for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")}
    has_fit_stage = True

    @classmethod
    def check(cls, card, params: Params) -> None:
        checks = {
            "top_k": params.top_k >= 1 and (params.protocol != "lvis" or params.top_k <= _LVIS_MAX_DETS),
            "epochs": params.epochs >= 1,
            "lr": params.lr > 0,
            "backbone_lr": params.backbone_lr >= 0,
            "text_lr": params.text_lr >= 0,
            "weight_decay": params.weight_decay >= 0,
            "focal_alpha": 0 <= params.focal_alpha <= 1,
            "focal_gamma": params.focal_gamma >= 0,
            "holdout_frequencies": set(params.holdout_frequencies) <= {"r", "c", "f"},
            **{k: getattr(params, k) >= 0 for k in ("class_weight", "l1_weight", "giou_weight")},
        }
        for key, ok in checks.items():
            if not ok:
                limit = f" (at most {_LVIS_MAX_DETS} for protocol 'lvis')" if key == "top_k" and params.protocol == "lvis" else ""
                raise SparcEvalError(
                    f"task card {card.path}: params key {key!r} has invalid value {getattr(params, key)!r}{limit}"
                )
        if card.fit_dataset is None:
            raise SparcEvalError(
                f"task card {card.path}: runner 'detection' needs a 'fit_dataset' (the split the heads are fitted on)"
            )
        if card.dataset.format == "lvis" and params.protocol != "lvis":
            raise SparcEvalError(
                f"task card {card.path}: LVIS data needs protocol 'lvis' (COCOeval ignores LVIS's federated labels)"
            )

    @classmethod
    def requirements(cls, params: Params) -> dict[str, str]:
        return {"lvis": "lvis"} if params.protocol == "lvis" else {}

    def __init__(self, card, params: Params, ctx):
        super().__init__(card, params, ctx)
        self.weights = LossWeights(
            params.class_weight, params.l1_weight, params.giou_weight, params.focal_alpha, params.focal_gamma
        )
        self.head: OwlHead | None = None
        self.fit_info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ fitting

    @functools.cached_property
    def templates(self) -> tuple[str, ...]:
        """The card's template set, or its template file (a relative path is taken from the evaluation dataset's root)."""
        return resolve_templates(self.params.templates, resolve_root(self.card, self.card.dataset, self.ctx.data_dir))

    def _queries(self, model, categories: list[dict]) -> torch.Tensor:
        return class_text_embeddings(model, [classname(c) for c in categories], self.templates, self.ctx)

    def fit(self, model: torch.nn.Module) -> None:
        p = self.params
        if p.train_backbone:  # the fine-tuned model is no longer the checkpoint that feature-cache keys name
            self.ctx.features = None
        head_file, backbone_file = self.ctx.cache_dir / HEAD_FILE, self.ctx.cache_dir / BACKBONE_FILE
        if self.ctx.world.all_true(head_file.is_file()):
            self._load_cache(model, head_file, backbone_file)
            return
        transform = functools.partial(_padded_preprocess, model.preprocess)
        dataset = self.open(self.card.fit_dataset, transform=transform)
        gt = GroundTruth.of(dataset, self.card.fit_dataset)
        with_boxes = {a["category_id"] for anns in gt.annotations.values() for a in anns if not a.get("iscrowd", 0)}
        fit_categories = [c for c in gt.categories if c["id"] in with_boxes and c.get("frequency") not in p.holdout_frequencies]
        if not fit_categories:
            raise SparcEvalError(
                f"fit dataset {gt.source} has no (non-crowd) box annotations of a category outside holdout_frequencies to fit detection heads on"
            )
        class_index = {c["id"]: i for i, c in enumerate(fit_categories)}
        targets = {image_id: gt.targets(image_id, class_index) for image_id in gt.images}
        n_boxes = sum(len(t.labels) for t in targets.values())
        n_annotations = sum(len(v) for v in gt.annotations.values())

        torch.manual_seed(self.ctx.seed)
        device = self.ctx.device
        world = self.ctx.world
        with torch.no_grad():  # one image tells the embedding width and the patch grid
            probe, grid = model.encode_image_dense(self.ctx.to_device(dataset[0]["image"].unsqueeze(0)), head=p.dense_head)
        head = OwlHead(probe.shape[-1], *grid, init_logit_scale=float(model.logit_scale.detach())).to(device)
        groups = [{"params": list(head.parameters()), "lr": p.lr}]
        if p.train_backbone:
            text_ids = _text_side_parameters(model)
            trainable = [q for q in model.parameters() if q.requires_grad]
            groups.append({"params": [q for q in trainable if id(q) not in text_ids], "lr": p.backbone_lr})
            groups.append({"params": [q for q in trainable if id(q) in text_ids], "lr": p.text_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
        batches = self.ctx.fit_batches(len(dataset), self.ctx.batch_size)
        weights = batches.weights()
        total = p.epochs * len(batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))

        names = [classname(c) for c in fit_categories]
        if p.train_backbone:
            # One module, so that DDP averages the gradients of the backbone and the head alike; each step decodes
            # its images and runs the text side afresh, so both towers get gradients.
            net = world.data_parallel(_BackboneAndHead(model, head), find_unused_parameters=True)
            loader = self.ctx.fit_loader(batches, dataset, _collate)
            steps = (batch for _ in range(p.epochs) for batch in loader)

            def step_outputs(batch):
                fresh = dataclasses.replace(self.ctx, memo={})
                with self.ctx.autocast():
                    return net(
                        self.ctx.to_device(batch["image"]),
                        p.dense_head,
                        lambda: class_text_embeddings(model, names, self.templates, fresh),
                    )

        else:
            net = world.data_parallel(head)
            with torch.no_grad():  # frozen queries: the same for every step, from the feature cache
                queries = self._queries(model, fit_categories)
            if self.ctx.features_fit_in_memory(len(dataset), probe[0].numel()):
                # The frozen backbone's patch embeddings of the fit split, encoded once (and cached), not once per epoch.
                features = self.ctx.image_features(
                    model,
                    dataset,
                    lambda x: model.encode_image_dense(x, head=p.dense_head)[0],
                    f"dense-{p.dense_head}",
                    f"pad-to-square, then {transform_id(model.preprocess)}",
                )
                steps = (
                    {"index": index, "image_id": [dataset.image_ids[i] for i in index]} for index in _epochs(batches, p.epochs)
                )
            else:
                features, loader = None, self.ctx.fit_loader(batches, dataset, _collate)
                steps = (batch for _ in range(p.epochs) for batch in loader)

            def step_outputs(batch):
                if features is not None:
                    dense = self.ctx.to_device(features[batch["index"]])
                else:
                    with torch.no_grad(), self.ctx.autocast():
                        dense, _ = model.encode_image_dense(self.ctx.to_device(batch["image"]), head=p.dense_head)
                return net(dense.float(), queries)

        model.train(p.train_backbone)
        losses: dict[str, float] = {}
        with make_progress() as progress:
            bar = progress.add_task("fitting detection heads", total=total, info="")
            for step_index, batch in enumerate(steps):
                weight = weights[step_index % len(weights)]  # 0.0: this rank's placeholder in a batch smaller than the world
                logits, boxes = step_outputs(batch)
                batch_targets = [targets[i] for i in batch["image_id"]]
                batch_targets = [Target(t.labels.to(device), t.boxes.to(device)) for t in batch_targets]
                matches = hungarian_match(logits, boxes, batch_targets, self.weights)
                # Losses are sums over the global batch's boxes / (its box count / world): DDP's mean over ranks is then
                # the global batch's loss, as one process computes it.
                normaliser = world.normaliser(weight * sum(len(t.labels) for t in batch_targets), device)
                step = detection_losses(logits, boxes, batch_targets, matches, self.weights, normaliser=normaliser)
                optimizer.zero_grad(set_to_none=True)
                (step["loss"] * weight).backward()
                optimizer.step()
                scheduler.step()
                parts = torch.stack([v.detach().double() * weight for v in step.values()]).cpu()
                losses = {k: round(float(v), 5) for k, v in zip(step, world.sum(parts) / world.size)}
                progress.update(bar, advance=1, info=f"loss {losses['loss']:.3f}")
        model.eval()
        head.eval()
        self.head = head
        self.fit_info = {
            "fit_split": f"{self.card.fit_dataset.format}:{gt.source}",
            "fit_images": len(dataset),
            "fit_categories": len(fit_categories),
            "holdout_frequencies": list(p.holdout_frequencies),
            "fit_boxes": n_boxes,
            "annotations_not_used_as_targets": n_annotations - n_boxes,
            "steps": total,
            "final_losses": losses,
            "train_backbone": p.train_backbone,
        }
        if self.ctx.is_main:
            self._save_cache(model, head_file, backbone_file)
        self.fit_info["cache"] = "fitted"

    def _save_cache(self, model, head_file: Path, backbone_file: Path) -> None:
        assert self.head is not None
        metadata = {"dim": str(self.head.dim), "grid": json.dumps(list(self.head.grid)), "fit_info": json.dumps(self.fit_info)}
        if self.params.train_backbone:  # backbone first: a head file on disk always has its backbone beside it
            with atomic_path(backbone_file) as tmp:
                save_model(model, str(tmp))
        with atomic_path(head_file) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(tmp), metadata=metadata)

    def _load_cache(self, model, head_file: Path, backbone_file: Path) -> None:
        try:
            with safe_open(str(head_file), framework="pt") as f:
                metadata = f.metadata()
            head = OwlHead(int(metadata["dim"]), *json.loads(metadata["grid"]))
            head.load_state_dict(load_file(str(head_file)))
            if self.params.train_backbone:
                load_model(model, str(backbone_file), device=str(self.ctx.device))
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
            raise SparcEvalError(
                f"cached detection head {head_file} cannot be loaded ({type(exc).__name__}); delete {head_file.parent} to fit again"
            ) from None
        self.head = head.to(self.ctx.device).eval()
        self.fit_info = {**json.loads(metadata["fit_info"]), "cache": f"reused {head_file}"}

    # ------------------------------------------------------------------------------------ evaluation

    def evaluate(self, model: torch.nn.Module) -> TaskOutput:
        if self.head is None:
            raise RuntimeError("DetectionRunner.evaluate called before fit")
        p = self.params
        transform = functools.partial(_padded_preprocess, model.preprocess)
        dataset = self.open(self.card.dataset, transform=transform)
        gt = GroundTruth.of(dataset, self.card.dataset)
        if p.protocol == "lvis":
            gt.require_lvis_fields()
        queries = self._queries(model, gt.categories)
        category_ids = np.array([c["id"] for c in gt.categories])
        samples = []
        loader = self.ctx.loader(self.ctx.shard(dataset), _collate)  # this rank's slice; samples gathered below
        for batch in track(loader, "detecting"):
            with self.ctx.autocast():
                dense, _ = model.encode_image_dense(self.ctx.to_device(batch["image"]), head=p.dense_head)
            logits, boxes = self.head(dense.float(), queries)
            for b, image_id in enumerate(batch["image_id"]):
                sample = gt.sample_ground_truth(image_id, p.protocol)
                sample["detections"] = self._detections(
                    logits[b].cpu(), boxes[b].cpu(), sample["width"], sample["height"], category_ids
                )
                samples.append(sample)
        samples = self.ctx.gather(samples)

        results = [
            {"image_id": s["image_id"], "category_id": c, "bbox": box, "score": score}
            for s in samples
            for box, c, score in zip(s["detections"]["boxes"], s["detections"]["category_ids"], s["detections"]["scores"])
        ]
        detections_file = self.ctx.artifact("detections.json")
        if self.ctx.is_main:
            write_json_atomic(detections_file, results, indent=None)
        model_info = model.describe()
        info = {
            "dense_head": p.dense_head,
            "dense_head_path": model_info.get("dense_heads", {}).get(p.dense_head),
            "templates": p.templates,
            "n_templates": len(self.templates),
            "query_categories": len(gt.categories),
            "evaluator": _EVALUATORS[p.protocol][1],
            "top_k": p.top_k,
            "image_preprocessing": "padded to a square (bottom/right) then the model's preprocess",
            **self.fit_info,
        }
        return TaskOutput(
            metrics=self.aggregate(samples, p),
            samples=samples,
            n_samples=len(samples),
            info=info,
            artifacts={"detections": detections_file.name},
        )

    def _detections(
        self, logits: torch.Tensor, boxes: torch.Tensor, width: int, height: int, category_ids: np.ndarray
    ) -> dict[str, list]:
        """Top-k (patch, class) pairs of one image as COCO boxes (xywh pixels, clipped to the image)."""
        cxcywh, classes, scores = top_k_detections(logits, boxes, self.params.top_k)
        side = max(width, height)
        x0 = np.clip((cxcywh[:, 0] - cxcywh[:, 2] / 2) * side, 0, width)
        y0 = np.clip((cxcywh[:, 1] - cxcywh[:, 3] / 2) * side, 0, height)
        x1 = np.clip((cxcywh[:, 0] + cxcywh[:, 2] / 2) * side, 0, width)
        y1 = np.clip((cxcywh[:, 1] + cxcywh[:, 3] / 2) * side, 0, height)
        xywh = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
        return {
            "boxes": [[round(float(v), 2) for v in box] for box in xywh],
            "category_ids": [int(c) for c in category_ids[classes]],
            "scores": [float(f"{s:.6g}") for s in scores],
        }

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: Params) -> dict[str, float | None]:
        gt, detections = samples_to_coco(samples)
        return _EVALUATORS[params.protocol][0](gt, detections)

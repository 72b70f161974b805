"""Zero-shot semantic segmentation: every patch takes the class whose text embedding it is most similar to.

The SPARC paper's protocol (App. D.7): dense patch embeddings from the model (`encode_image_dense`,
head from the card; "global" sends each patch through the pooled embedding's head, for a plain CLIP
the MaskCLIP-style path) are compared by cosine similarity with prompt-ensembled class text
embeddings (a class scores its best synonym); the per-patch scores are upsampled bilinearly to the
label's size and the arg-max is the prediction.

Geometry: the image is resized so that its short side is `short_side` (if set), cut into square
`crop` windows every `stride` pixels (mmseg's slide inference; if unset, one window = the whole
image), and each window is resized to the model's input size. Window scores are upsampled to the
window, averaged where windows overlap, then upsampled to the label's size.

Background protocols (dataset class 0 is the background in VOC layouts):
  ignore     background pixels are ignored, the model chooses among the other classes (voc-seg, synth-seg)
  threshold  the model chooses among the other classes; a pixel whose top class probability (softmax of
             logit_scale * cosine) is below `background_threshold` becomes background (voc21-seg)
  none       the dataset has no background class; every class is predicted (context-seg, 59 classes)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import write_json_atomic
from sparc_eval.metrics.segmentation import (
    IGNORE_INDEX,
    Areas,
    SegmentationScores,
    confusion_matrix,
    segmentation_scores,
    total_areas,
)
from sparc_eval.progress import track
from sparc_eval.tasks.prompts import (
    best_synonym_scores,
    class_text_embeddings,
    flatten_synonyms,
    read_classnames,
    resolve_templates,
    split_synonyms,
)
from sparc_eval.tasks.runner import Runner, TaskOutput, resolve_root

# How mIoU picks its classes, stated in every record (mmseg IoUMetric: nanmean over per-class IoU).
MIOU_CLASSES = (
    "classes with a non-empty union over the split, i.e. present in the ground truth or predicted on at "
    "least one non-ignored pixel (mmseg IoUMetric's NaN-skipping mean); a class predicted but absent from "
    "the ground truth counts with IoU 0; mAcc averages the classes present in the ground truth"
)


# ------------------------------------------------------------------------------ background protocols


@dataclass(frozen=True)
class BackgroundProtocol:
    """How dataset class 0 is treated: which dataset classes the model scores, and how labels / predictions map."""

    description: str
    # Dataset classes [first_text_class:] get text embeddings; [first_metric_class:] are the metric's classes.
    first_text_class: int
    first_metric_class: int
    predict: Callable[[torch.Tensor, float, float | None], torch.Tensor]  # scores [K,H,W], logit scale, threshold -> [H,W]

    def metric_label(self, label: np.ndarray) -> np.ndarray:
        """Dataset label values -> metric class indices (255 stays ignored; class 0 ignored when it is not scored)."""
        out = label.astype(np.int64) - self.first_metric_class
        out[(label == IGNORE_INDEX) | (out < 0)] = IGNORE_INDEX
        return out


def _argmax(scores: torch.Tensor, logit_scale: float, threshold: float | None) -> torch.Tensor:
    return scores.argmax(0)


def _argmax_or_background(scores: torch.Tensor, logit_scale: float, threshold: float | None) -> torch.Tensor:
    prob = (logit_scale * scores).softmax(0)
    top, cls = prob.max(0)
    return torch.where(top < threshold, torch.zeros_like(cls), cls + 1)  # metric class 0 = background


BACKGROUND_PROTOCOLS: dict[str, BackgroundProtocol] = {
    "ignore": BackgroundProtocol("class 0 (background) ignored; the model chooses among the other classes", 1, 1, _argmax),
    "threshold": BackgroundProtocol(
        "class 0 (background) wherever the top probability (softmax of logit_scale x cosine over the other classes) "
        "is below background_threshold",
        1,
        0,
        _argmax_or_background,
    ),
    "none": BackgroundProtocol("no background class; the model chooses among all classes", 0, 0, _argmax),
}


# ------------------------------------------------------------------------------ windows


@dataclass
class Windows:
    """One image cut into model-sized windows: pixels [n, 3, S, S], boxes (y0, x0, y1, x1) in the resized image."""

    pixels: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    resized: tuple[int, int]  # (H, W) the windows tile
    size: tuple[int, int]  # (H, W) of the original image


def slide_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide-inference windows: a grid every `stride` pixels, the last row / column flush with the edge."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y1 - crop, 0), max(x1 - crop, 0), y1, x1))
    return boxes


def model_input_size(preprocess: Callable[[Image.Image], torch.Tensor]) -> tuple[int, int]:
    """(H, W) of the model's input, read off what `preprocess` makes of a blank image."""
    return tuple(preprocess(Image.new("RGB", (32, 32))).shape[-2:])  # type: ignore[return-value]


class WindowSampler:
    """PIL image -> Windows (runs in DataLoader workers, so it holds only the preprocess and numbers)."""

    def __init__(self, preprocess: Callable, short_side: int | None, crop: int | None, stride: int | None):
        self.preprocess = preprocess
        self.input_size = model_input_size(preprocess)
        self.short_side, self.crop, self.stride = short_side, crop, stride

    def __call__(self, image: Image.Image) -> Windows:
        w0, h0 = image.size
        if self.short_side is not None and min(w0, h0) != self.short_side:
            scale = self.short_side / min(w0, h0)
            image = image.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))), Image.BICUBIC)
        w, h = image.size
        boxes = slide_boxes(h, w, self.crop, self.stride) if self.crop else [(0, 0, h, w)]
        target = (self.input_size[1], self.input_size[0])  # PIL wants (W, H)
        pixels = []
        for y0, x0, y1, x1 in boxes:
            window = image.crop((x0, y0, x1, y1))
            # Resize to exactly the input size first, so preprocess's resize + centre crop cut nothing off.
            pixels.append(self.preprocess(window if window.size == target else window.resize(target, Image.BICUBIC)))
        return Windows(torch.stack(pixels), boxes, (h, w), (h0, w0))


def stitch(window_scores: torch.Tensor, windows: Windows) -> torch.Tensor:
    """Per-window scores [n, K, h, w] -> scores [K, H, W] at the original image size."""
    k = window_scores.shape[1]
    total = window_scores.new_zeros((k, *windows.resized))
    count = window_scores.new_zeros(windows.resized)
    for scores, (y0, x0, y1, x1) in zip(window_scores, windows.boxes):
        total[:, y0:y1, x0:x1] += F.interpolate(scores[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
        count[y0:y1, x0:x1] += 1
    scores = total / count
    if windows.resized != windows.size:
        scores = F.interpolate(scores[None], size=windows.size, mode="bilinear", align_corners=False)[0]
    return scores


# ------------------------------------------------------------------------------ runner


@dataclass
class SegmentationParams:
    # A template set name (openai-imagenet, simple) or a template file (relative to the dataset root, as in every runner).
    templates: str
    # A class-name file shipped with the cards (relative to the card's folder): one class per line, comma-separated
    # synonyms, in dataset-class order without the background. Default: the reader's class names.
    classnames: str | None = None
    head: Literal["global", "local"] = "global"
    background: Literal["ignore", "threshold", "none"] = "none"
    background_threshold: float | None = None
    short_side: int | None = None
    crop: int | None = None
    stride: int | None = None


@dataclass
class Prepared:
    """The opened evaluation split and its class sets (dataset classes, classes the model scores, metric classes)."""

    dataset: Any
    dataset_classes: list[str]
    text_classes: list[list[str]]
    metric_classes: list[str]
    templates: tuple[str, ...]
    input_size: tuple[int, int]


@dataclass
class SegmentedImage:
    """One image's prediction and ground truth, both as metric class indices [H, W] (255 = ignored in the label)."""

    image_id: Any
    path: str
    pred: np.ndarray
    label: np.ndarray


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _metrics(scores: SegmentationScores) -> dict[str, float | None]:
    return {"mIoU": _pct(scores.miou), "aAcc": _pct(scores.aacc), "mAcc": _pct(scores.macc)}


class SegmentationRunner(Runner):
    """Zero-shot semantic segmentation; metrics in percent, as mmseg and the paper report them."""

    family = "segmentation"

    Params = SegmentationParams
    metrics = {"mIoU": True, "aAcc": True, "mAcc": True}

    @classmethod
    def check(cls, card, params: SegmentationParams) -> None:
        p, where = params, f"task card {card.path}"
        if (p.background == "threshold") != (p.background_threshold is not None):
            raise SparcEvalError(f"{where}: background_threshold is set exactly when background is 'threshold'")
        if p.background_threshold is not None and not 0.0 < p.background_threshold < 1.0:
            raise SparcEvalError(f"{where}: background_threshold must lie in (0, 1), got {p.background_threshold}")
        if (p.crop is None) != (p.stride is None):
            raise SparcEvalError(f"{where}: give both crop and stride for sliding windows, or neither")
        if p.crop is not None and not 0 < p.stride <= p.crop:
            raise SparcEvalError(f"{where}: need 0 < stride <= crop, got crop {p.crop} and stride {p.stride}")
        if p.short_side is not None and p.short_side < 1:
            raise SparcEvalError(f"{where}: short_side must be positive, got {p.short_side}")

    def __init__(self, card, params: SegmentationParams, ctx):
        super().__init__(card, params, ctx)
        self.protocol = BACKGROUND_PROTOCOLS[params.background]

    # -------------------------------------------------------------- classes

    def class_sets(self, dataset_classes: list[str]) -> tuple[list[list[str]], list[str]]:
        """(synonyms of each class the model scores, names of the metric's classes), checked against the dataset."""
        scored = dataset_classes[self.protocol.first_text_class :]
        if self.params.classnames is None:
            text = [split_synonyms(name, f"class names of {self.card.dataset.root}") for name in scored]
        else:
            path = self.card.path.parent / Path(self.params.classnames).expanduser()  # an absolute path stays as is
            text = read_classnames(path)
            if len(text) != len(scored):
                raise SparcEvalError(
                    f"class-name file {path} has {len(text)} lines but task {self.card.name} scores {len(scored)} "
                    f"dataset classes ({', '.join(scored[:2])}, ..., {scored[-1]})"
                )
        return text, dataset_classes[self.protocol.first_metric_class :]

    # -------------------------------------------------------------- prediction (shared with `sparc-eval viz seg`)

    def prepare(self, model) -> Prepared:
        """Open the evaluation split (full, not limited) for `model` and fix the class sets."""
        sampler = WindowSampler(model.preprocess, self.params.short_side, self.params.crop, self.params.stride)
        dataset = self.open(self.card.dataset, transform=sampler)
        dataset_classes = list(getattr(dataset, "classnames", None) or [])
        if not dataset_classes:
            raise SparcEvalError(f"task card {self.card.path}: the {self.card.dataset.format} reader gives no class names")
        text_classes, metric_classes = self.class_sets(dataset_classes)
        templates = resolve_templates(self.params.templates, resolve_root(self.card, self.card.dataset, self.ctx.data_dir))
        return Prepared(dataset, dataset_classes, text_classes, metric_classes, templates, sampler.input_size)

    def predictions(self, model, prep: Prepared, dataset=None) -> Iterator[SegmentedImage]:
        """Stream `dataset` (default: prep.dataset) through `model`; one SegmentedImage per image, in order."""
        names, owners = flatten_synonyms(prep.text_classes)
        n_text = len(prep.text_classes)
        text = class_text_embeddings(model, names, prep.templates, self.ctx)
        logit_scale = float(model.logit_scale)
        loader = self.ctx.loader(prep.dataset if dataset is None else dataset, collate_fn=list)
        for batch in track(loader, f"segmenting ({self.card.name})"):
            pixels = torch.cat([item["image"].pixels for item in batch])  # every window of the batch's images
            scores = []
            for chunk in pixels.split(self.ctx.batch_size):
                with self.ctx.autocast():
                    dense, (gh, gw) = model.encode_image_dense(self.ctx.to_device(chunk), head=self.params.head)
                cos = F.normalize(dense.float(), dim=-1) @ text.T  # [n, P, synonyms]
                per_class = best_synonym_scores(cos, owners, n_text)
                scores.append(per_class.transpose(1, 2).reshape(len(chunk), n_text, gh, gw))
            window_scores = torch.cat(scores).split([len(item["image"].boxes) for item in batch])
            for item, item_scores in zip(batch, window_scores):
                # The reader guarantees a label of the image's size with values in [0, classes) or 255.
                pred = self.protocol.predict(stitch(item_scores, item["image"]), logit_scale, self.params.background_threshold)
                yield SegmentedImage(
                    item["image_id"], item["path"], pred.cpu().numpy(), self.protocol.metric_label(item["label"].numpy())
                )

    # -------------------------------------------------------------- evaluate / aggregate

    def evaluate(self, model) -> TaskOutput:
        prep = self.prepare(model)
        n = len(prep.metric_classes)
        confusion = np.zeros((n, n), np.int64)
        samples = []
        for seg in self.predictions(model, prep, self.ctx.shard(prep.dataset)):  # this rank's slice
            cm = confusion_matrix(seg.pred, seg.label, n)
            confusion += cm
            areas = Areas.from_confusion(cm)
            samples.append(
                {
                    "image_id": seg.image_id,
                    "intersect": areas.intersect.tolist(),
                    "union": areas.union.tolist(),
                    "label_area": areas.label.tolist(),
                }
            )
        confusion, samples = self.ctx.all_reduce_counts(confusion), self.ctx.gather(samples)
        scores = segmentation_scores(Areas.from_confusion(confusion))
        artifact = self.ctx.artifact("confusion.json")
        if self.ctx.is_main:
            write_json_atomic(
                artifact,
                {
                    "classes": prep.metric_classes,
                    "rows": "ground truth",
                    "columns": "prediction",
                    "ignore_index": IGNORE_INDEX,
                    "matrix": confusion.tolist(),
                },
                indent=None,
            )
        info = {
            "head": self.params.head,
            "dense_path": model.describe().get("dense_heads", {}).get(self.params.head),
            "background": {
                "protocol": self.params.background,
                "rule": self.protocol.description,
                "threshold": self.params.background_threshold,
            },
            "logit_scale": float(model.logit_scale),
            "miou_classes": MIOU_CLASSES,
            "n_classes_scored": scores.n_classes_scored,
            "templates": {"ref": self.params.templates, "count": len(prep.templates)},
            "text_classes": prep.text_classes,
            "windows": {
                "short_side": self.params.short_side,
                "crop": self.params.crop,
                "stride": self.params.stride,
                "model_input": list(prep.input_size),
            },
            "per_class": {
                name: {"IoU": None if np.isnan(i) else 100.0 * float(i), "Acc": None if np.isnan(a) else 100.0 * float(a)}
                for name, i, a in zip(prep.metric_classes, scores.iou, scores.acc)
            },
        }
        return TaskOutput(
            metrics=_metrics(scores), samples=samples, n_samples=len(samples), info=info, artifacts={"confusion": artifact.name}
        )

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: SegmentationParams) -> dict[str, float | None]:
        """mIoU / aAcc / mAcc recomputed from the per-image intersection, union and label-area counts."""
        if not samples:
            return {name: None for name in cls.metrics}
        n = len(samples[0]["intersect"])
        areas = [Areas.from_counts(s["intersect"], s["union"], s["label_area"]) for s in samples]
        return _metrics(segmentation_scores(total_areas(areas, n)))

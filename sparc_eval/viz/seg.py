"""`sparc-eval viz seg`: image | ground truth | prediction panels for a segmentation task (the SPARC paper's Fig. 3).

Predictions come from the segmentation runner itself (`SegmentationRunner.predictions`), so the
pictures show exactly what `sparc-eval run` scores. Colours follow the VOC colour map by dataset class
index (so VOC pictures use VOC's familiar colours); ignored pixels are white.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparc_eval.errors import SparcEvalError
from sparc_eval.metrics.segmentation import IGNORE_INDEX, intersect_and_union, segmentation_scores

IGNORED_COLOUR = (255, 255, 255)


def voc_colour_map(n: int = 256) -> np.ndarray:
    """The standard VOC colour map (bit-interleaved class index), uint8 [n, 3]."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def colourise(classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Metric class map [H, W] (255 = ignored) -> RGB uint8 [H, W, 3]."""
    rgb = np.empty((*classes.shape, 3), np.uint8)
    ignored = classes == IGNORE_INDEX
    rgb[ignored] = IGNORED_COLOUR
    rgb[~ignored] = colours[classes[~ignored]]
    return rgb


def draw_panels(image_path: str, seg, class_names: list[str], colours: np.ndarray, title: str, out: Path) -> dict[str, Any]:
    """One figure: image | ground truth | prediction, legend of the classes in either map; written atomically."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from sparc_eval.data.common import open_image
    from sparc_eval.fileio import atomic_path

    n = len(class_names)
    scores = segmentation_scores(intersect_and_union(seg.pred, seg.label, n))
    shown = sorted(set(np.unique(seg.pred).tolist()) | (set(np.unique(seg.label).tolist()) - {IGNORE_INDEX}))
    fig = Figure(figsize=(10.5, 3.9), dpi=110, layout="constrained")
    miou = "n/a" if scores.miou is None else f"{100 * scores.miou:.1f}%"
    prediction = colourise(seg.pred, colours)
    ignored = seg.label == IGNORE_INDEX
    # Pixels the metric ignores are faded, so the scored part of the prediction stands out.
    prediction[ignored] = (0.3 * prediction[ignored] + 0.7 * np.array(IGNORED_COLOUR)).astype(np.uint8)
    panels = (
        ("image", np.asarray(open_image(Path(image_path)))),
        ("ground truth", colourise(seg.label, colours)),
        (f"prediction (image mIoU {miou})", prediction),
    )
    for k, (name, picture) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=colours[c] / 255.0, edgecolor="black", label=class_names[c]) for c in shown]
    if ignored.any():
        handles.append(
            Patch(facecolor=np.array(IGNORED_COLOUR) / 255.0, edgecolor="black", label="ignored (faded in the prediction)")
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return {"image_id": seg.image_id, "out": str(out), "image_miou": None if scores.miou is None else 100 * scores.miou}


def render_segmentation(
    ckpt: str,
    task: str,
    n: int,
    out_dir: str | Path,
    *,
    data_dir: str | Path = "data",
    device: str = "cpu",
    batch_size: int = 16,
    trust_pickle: bool = False,
) -> list[dict[str, Any]]:
    """Panels for the first `n` images of `task`'s evaluation split, one PNG each in `out_dir`."""
    from sparc_eval.evaluation import resolve_device
    from sparc_eval.models.loaders import load_model
    from sparc_eval.tasks.card import load_card, validate_params
    from sparc_eval.tasks.runner import RunContext, get_runner
    from sparc_eval.tasks.segmentation import SegmentationRunner

    if n < 1:
        raise SparcEvalError(f"--n must be at least 1, got {n}")
    card = load_card(task)
    runner_cls = get_runner(card.runner, card.path)
    if not issubclass(runner_cls, SegmentationRunner):
        raise SparcEvalError(f"task {card.name} is a {card.runner!r} task; viz seg needs a segmentation task")
    params = validate_params(runner_cls.Params, card.params, card)
    dev = resolve_device(device)
    model = load_model(ckpt, trust_pickle=trust_pickle).to(dev).eval()
    out_dir = Path(out_dir)
    ctx = RunContext(
        device=dev,
        batch_size=batch_size,
        precision="fp32",
        limit=n,
        num_workers=0,
        seed=0,
        data_dir=Path(data_dir),
        work_dir=out_dir,
        record_stem=card.name,
        cache_dir=out_dir,
    )
    runner = runner_cls(card, params, ctx)
    colours = voc_colour_map()[runner.protocol.first_metric_class :]
    title = f"{card.name} · {model.describe().get('ref', ckpt)} · head {params.head}"
    written = []
    with torch.inference_mode():
        prep = runner.prepare(model)
        for seg in runner.predictions(model, prep, ctx.limited(prep.dataset)):
            stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(seg.image_id))
            written.append(
                draw_panels(
                    seg.path,
                    seg,
                    prep.metric_classes,
                    colours,
                    f"{title} · image {seg.image_id}",
                    out_dir / f"{card.name}-{stem}.png",
                )
            )
    return written

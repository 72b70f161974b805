"""Render docs/img/synthscenes.png: six SynthScenes val images, their VOC masks and instance boxes, one caption each.

Run from the repository root: python docs/img/synthscenes_png.py
"""

import json
import sys
import tempfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
from PIL import Image

from sparc_eval.data.synth import SHAPES, generate_synthscenes

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/synthscenes.png")
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "synthscenes"
    generate_synthscenes(root, seed=0, n_train=24, n_val=12, workers=1)
    scenes = [s for s in json.loads((root / "scenes.json").read_text())["images"] if s["split"] == "val"][:6]
    fig, axes = plt.subplots(2, 6, figsize=(18, 8.2))
    for k, scene in enumerate(scenes):
        ax_img, ax_mask = axes[k // 3, 2 * (k % 3)], axes[k // 3, 2 * (k % 3) + 1]
        stem = Path(scene["file_name"]).stem
        ax_img.imshow(Image.open(root / scene["file_name"]), interpolation="nearest")
        for obj in scene["objects"]:
            x, y, w, h = obj["bbox"]
            ax_img.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, lw=1, ec="white"))
        mask = Image.open(root / f"VOCdevkit/SynthScenes/SegmentationClass/{stem}.png")
        ax_mask.imshow(mask.convert("RGB"), interpolation="nearest")  # palette colours, for display only
        present = sorted({SHAPES.index(o["shape"]) + 1 for o in scene["objects"]})
        ax_mask.set_title("mask: " + ", ".join(SHAPES[c - 1] for c in present) + " (cream = 255, ignored)", fontsize=8)
        ax_img.set_title(f"{stem} (val)", fontsize=9)
        caption = scene["captions"][0]["text"]
        ax_img.set_xlabel("\n".join(textwrap.wrap(caption, 52)), fontsize=8, loc="left")
        for ax in (ax_img, ax_mask):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("SynthScenes (seed 0): image with instance boxes | VOC SegmentationClass mask; first caption below", fontsize=12)
    fig.tight_layout(h_pad=2.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(out)

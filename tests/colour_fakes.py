"""A fake model of the contract whose answers are known in advance: it sees only colours.

An image embeds as its mean RGB; a text embeds as the RGB of the first colour word it contains. So a
solid-colour image matches exactly the prompts and captions that name its colour, and every expected
rank can be worked out by hand. The tests build tiny solid-colour datasets in the real on-disk formats
and run a card's runner directly (`run_runner`), as `evaluate` does, without loading a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from sparc_eval.tasks.card import load_card, validate_params
from sparc_eval.tasks.runner import RunContext, TaskOutput, get_runner

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255), "grey": (128, 128, 128)}
_FLOOR = 0.05  # a constant fourth component keeps every embedding non-zero (black, unknown words)


class ColourModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoded_texts: list[str] = []  # every text passed to tokenize, to check batching and caching

    @staticmethod
    def preprocess(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32) / 255).permute(2, 0, 1)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        self.encoded_texts.extend(texts)
        rows = []
        for text in texts:
            words = text.lower().replace(".", " ").replace(",", " ").split()
            rgb = next((COLOURS[w] for w in words if w in COLOURS), (0, 0, 0))
            rows.append(rgb)
        return torch.tensor(rows, dtype=torch.long)

    @staticmethod
    def _embed(rgb: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([rgb, torch.full_like(rgb[:, :1], _FLOOR)], dim=1), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._embed(images.float().mean(dim=(2, 3)))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._embed(tokens.float() / 255)

    def describe(self) -> dict:
        return {"source": "test", "arch": "colour", "ref": "colour-model", "sha256": "0" * 64}


def solid(colour: str, size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), COLOURS[colour])


def write_imagefolder(root: Path, split: str, images: dict[str, list[str]], classnames: list[str]) -> Path:
    """root/split/<folder>/<n>.png: images[folder] lists the colour of each image; classnames.txt beside."""
    for folder, colours in images.items():
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        for n, colour in enumerate(colours):
            solid(colour).save(root / split / folder / f"{n:03d}.png")
    (root / "classnames.txt").write_text("".join(f"{name}\n" for name in classnames))
    return root


def write_karpathy(root: Path, entries: list[tuple[str, list[str]]], split: str = "test") -> Path:
    """root/images/<n>.png (solid colour) and root/dataset_test.json, one entry per (colour, captions)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for n, (colour, captions) in enumerate(entries):
        solid(colour).save(root / "images" / f"{n:03d}.png")
        images.append(
            {
                "filepath": "images",
                "filename": f"{n:03d}.png",
                "imgid": n,
                "cocoid": 100 + n,
                "split": split,
                "sentences": [{"raw": c, "tokens": c.split(), "imgid": n, "sentid": 10 * n + j} for j, c in enumerate(captions)],
            }
        )
    (root / "dataset_test.json").write_text(json.dumps({"images": images}))
    return root


def make_ctx(tmp_path: Path, *, batch_size: int = 4, limit: int | None = None, precision: str = "fp32") -> RunContext:
    return RunContext(
        device=torch.device("cpu"),
        batch_size=batch_size,
        precision=precision,
        limit=limit,
        num_workers=0,
        seed=0,
        data_dir=tmp_path,
        work_dir=tmp_path / "results",
        record_stem="test",
        cache_dir=tmp_path / "cache",
    )


def run_runner(tmp_path: Path, card: dict | str, model: torch.nn.Module, **ctx_options) -> tuple[TaskOutput, type, object]:
    """Validate `card` (a card name, or a dict written to a YAML file) and run its runner's evaluate under
    inference mode, with `tmp_path` as the data folder."""
    if isinstance(card, dict):
        path = tmp_path / f"{card['name']}.yaml"
        path.write_text(yaml.safe_dump(card))
        card = str(path)
    loaded = load_card(card)
    runner_cls = get_runner(loaded.runner, loaded.path)
    params = validate_params(runner_cls.Params, loaded.params, loaded)
    with torch.inference_mode():
        output = runner_cls(loaded, params, make_ctx(tmp_path, **ctx_options)).evaluate(model)
    return output, runner_cls, params

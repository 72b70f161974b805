"""Training input pipeline: images/s the DataLoader delivers with 0, 1 and 2 workers (224 px JPEGs, decoded, resized
and tokenized as training does), beside the model's own images/s per training step, and the trainer end to end.

Measured side by side in one process on one set of files:

1. decode cost: ms per image of the work a worker does for one image (JPEG decode, the model's transform, the
   caption's tokenization), on one core: what sizes the worker count a GPU needs;
2. input only: images/s of `batch_loader` (the trainer's own loader) with 0, 1 and 2 workers, no model;
3. model only: images/s of the trainer's `train_step` on a batch already in memory (tiny; ViT-B/16 with --vit-b);
4. end to end: images/s of loader + train_step with 0, 1 and 2 workers (tiny), as a ratio to model only:
   1.00 means the input pipeline is not the bottleneck. Model only and end to end are interleaved over
   --rounds rounds and the medians reported.

Example: nice -n 10 python bench/input_pipeline.py --images 512 --batch-size 64 --steps 8 --vit-b
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from sparc_eval.data.common import open_image
from sparc_eval.models.objectives import build_objective
from sparc_eval.models.sparc import create_model
from sparc_eval.train.batches import PairBatches, batch_loader
from sparc_eval.train.loop import TrainConfig, make_optimizer, train_step

console = Console(width=160)


def make_jpegs(folder: Path, n: int, size: int, seed: int) -> Path:
    """n photo-like size x size JPEGs (smooth colour fields plus noise, quality 90) and a pairs file naming them."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bicubic")
        pixels = ((base[0] + 0.08 * torch.randn(3, size, size, generator=g)).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, format="JPEG", quality=90)
        rows.append({"image": name, "caption": f"a small red circle left of a large blue square number {i}"})
    pairs = folder / "train.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return pairs


def decode_ms(batches: PairBatches, tokenize, n: int) -> float:
    """ms per image on one thread, as a DataLoader worker runs (torch gives each worker one intra-op thread; with
    more, the transform's elementwise ops on 224 px tensors fan out and, on a loaded machine, wait for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _decode_ms(batches, tokenize, n)
    finally:
        torch.set_num_threads(threads)


def _decode_ms(batches: PairBatches, tokenize, n: int) -> float:
    dataset = batches.dataset
    n = min(n, len(dataset))
    start = time.perf_counter()
    for i in range(n):
        batches.dataset.transform(open_image(dataset.paths[i]))
        tokenize([dataset.captions[i]])
    return (time.perf_counter() - start) / n * 1000


def loader_rate(batches, tokenize, workers: int, steps: int, batch_size: int) -> float:
    """Images/s of the trainer's loader alone (the first batch, which starts the workers, is not timed)."""
    it = batch_loader(
        batches,
        start=0,
        steps=steps + 1,
        rank=0,
        local=batch_size,
        tokenize=tokenize,
        num_workers=workers,
        pin_memory=False,
        seed=0,
    )
    next(it)
    start = time.perf_counter()
    for _ in it:
        pass
    return steps * batch_size / (time.perf_counter() - start)


def model_and_step(arch: str, batch_size: int, batches, steps: int, workers: int | None):
    """Images/s of train_step on a preloaded batch (workers None) or fed by the loader with `workers` workers."""
    torch.manual_seed(0)
    model = create_model(arch)
    objective = build_objective("sparc")
    optimizer = make_optimizer(torch.nn.ModuleList([model, objective]), TrainConfig(data="", out=""))
    batches.transform = model.preprocess
    batches.dataset.transform = model.preprocess
    model.train()

    def step(images, tokens):
        train_step(model, objective, optimizer, images, tokens, grad_clip=1.0, bf16=False)

    if workers is None:
        images, captions = batches.load(batches.rows(0))
        tokens = model.tokenize(captions)
        step(images, tokens)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            step(images, tokens)
        return steps * batch_size / (time.perf_counter() - start)
    it = batch_loader(
        batches,
        start=0,
        steps=steps + 1,
        rank=0,
        local=batch_size,
        tokenize=model.tokenizer,
        num_workers=workers,
        pin_memory=False,
        seed=0,
    )
    step(*next(it))  # warm-up, workers started
    start = time.perf_counter()
    for images, tokens in it:
        step(images, tokens)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224, help="JPEG side in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the model-only and end-to-end runs")
    parser.add_argument("--vit-b", action="store_true", help="also time ViT-B/16 training steps (slow on CPU)")
    parser.add_argument("--vit-b-batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_jpegs(Path(tmp), args.images, args.size, seed=0)
        jpeg_kib = sum(p.stat().st_size for p in Path(tmp).glob("*.jpg")) / args.images / 1024
        tiny = create_model("tiny")
        rows: list[tuple[str, str, str]] = []

        class Rows(list):
            def append(self, row: tuple[str, str, str]) -> None:  # print each figure as it comes (long runs)
                console.print(" | ".join(row), highlight=False)
                super().append(row)

        rows = Rows()
        tiny_batches = PairBatches(pairs, args.batch_size, 0, tiny.preprocess)
        cost_tiny = decode_ms(tiny_batches, tiny.tokenizer, 128)
        rows.append(
            (
                "decode + transform + tokenize, 1 core (tiny, to 64 px)",
                f"{cost_tiny:.2f} ms/image",
                f"{1000 / cost_tiny:.0f} images/s per worker",
            )
        )
        if args.vit_b:
            vitb = create_model("vit-b-16")
            cost_b = decode_ms(PairBatches(pairs, args.batch_size, 0, vitb.preprocess), vitb.tokenizer, 128)
            rows.append(
                (
                    "decode + transform + tokenize, 1 core (ViT-B/16, 224 px)",
                    f"{cost_b:.2f} ms/image",
                    f"{1000 / cost_b:.0f} images/s per worker",
                )
            )
        for workers in (0, 1, 2):
            rate = loader_rate(tiny_batches, tiny.tokenizer, workers, args.steps, args.batch_size)
            rows.append((f"input only, {workers} worker(s) (tiny transform)", f"{rate:.0f} images/s", ""))
        # Model only and end to end, interleaved over rounds (medians), so that a machine's drift hits all alike.
        rates: dict[int | None, list[float]] = {None: [], 0: [], 1: [], 2: []}
        for _ in range(args.rounds):
            for workers in rates:
                batches = PairBatches(pairs, args.batch_size, 0, tiny.preprocess)
                rates[workers].append(model_and_step("tiny", args.batch_size, batches, args.steps, workers))
        model_only = statistics.median(rates[None])
        rows.append(("model only: tiny train_step, batch preloaded", f"{model_only:.0f} images/s", "1.00"))
        for workers in (0, 1, 2):
            rate = statistics.median(rates[workers])
            rows.append((f"end to end: tiny, {workers} worker(s)", f"{rate:.0f} images/s", f"{rate / model_only:.2f}"))
        if args.vit_b:
            b = args.vit_b_batch
            rate = model_and_step("vit-b-16", b, PairBatches(pairs, b, 0, vitb.preprocess), 2, None)
            rows.append((f"model only: ViT-B/16 train_step, batch {b}, fp32", f"{rate:.2f} images/s", ""))
    table = Table(
        title=f"training input, {args.images} JPEGs of {args.size} px ({jpeg_kib:.0f} KiB each), batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    for col in ("measurement", "rate", "per worker / ratio to model only"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()

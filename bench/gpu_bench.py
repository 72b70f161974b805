"""GPU figures for bench/gpu_check.sh: evaluation throughput and training step time, on synthetic batches.

eval:  images/s of encode_image at the model's resolution (ViT-B/16: 224 px), weights in bf16 or fp32 as
       `sparc-eval run --precision` casts them, CUDA-synchronised, after warm-up.
train: ms per training step (the trainer's own train_step: forward, losses in fp32, backward, clipping, fused
       AdamW) for each objective on one model and batch, interleaved in ABBA order so drift hits both alike;
       the median step time, images/s and peak CUDA memory per objective, and the ratio to the first objective.

Prints one JSON object per measurement (bench/gpu_check.sh collects them).

Example: python bench/gpu_bench.py eval --arch vit-b-16 --batch-size 256 --precision bf16 --device cuda
Example: python bench/gpu_bench.py train --arch vit-b-16 --batch-size 256 --objectives sparc clip --bf16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from sparc_eval.models.objectives import build_objective
from sparc_eval.models.sparc import create_model
from sparc_eval.train.loop import TrainConfig, make_optimizer, train_step

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " and ".join(
            f"a {rng.choice(('small', 'large'))} {rng.choice(COLOURS)} {rng.choice(SHAPES)}" for _ in range(rng.randint(1, 3))
        )
        for _ in range(n)
    ]


def bench_eval(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.arch).to(device).eval()
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    size = model.preprocess.transforms[1].size[0] if hasattr(model.preprocess, "transforms") else 224
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        for _ in range(args.warmup):
            model.encode_image(images.to(dtype))
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            model.encode_image(images.to(dtype))
        _sync(device)
    seconds = time.perf_counter() - start
    return {
        "measure": "eval encode_image",
        "arch": args.arch,
        "image_size": size,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "device": str(device),
        "images_per_s": round(args.iters * args.batch_size / seconds, 1),
    }


def bench_train(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    setups = {}
    for name in args.objectives:
        torch.manual_seed(0)
        model = create_model(args.arch).to(device).train()
        objective = build_objective(name).to(device)
        optimizer = make_optimizer(torch.nn.ModuleList([model, objective]), TrainConfig(data="", out=""))
        setups[name] = (model, objective, optimizer)
    first = setups[args.objectives[0]][0]
    size = first.preprocess.transforms[1].size[0] if hasattr(first.preprocess, "transforms") else 224
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    tokens = first.tokenize(captions(args.batch_size, 0)).to(device)
    times: dict[str, list[float]] = {name: [] for name in args.objectives}
    peaks: dict[str, int] = {}

    def step(name: str) -> float:
        model, objective, optimizer = setups[name]
        _sync(device)
        start = time.perf_counter()
        train_step(model, objective, optimizer, images, tokens, grad_clip=1.0, bf16=args.bf16)
        _sync(device)
        return time.perf_counter() - start

    for name in args.objectives:  # warm-up, and each objective's peak memory on its own
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            step(name)
        if device.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated(device)
    order = list(args.objectives)
    for rep in range(args.iters):
        for name in order if rep % 2 == 0 else order[::-1]:
            times[name].append(step(name))
    base = statistics.median(times[order[0]])
    out = []
    for name in order:
        median = statistics.median(times[name])
        out.append(
            {
                "measure": "train step",
                "arch": args.arch,
                "objective": name,
                "batch_size": args.batch_size,
                "bf16": args.bf16,
                "device": str(device),
                "ms_per_step": round(median * 1000, 1),
                "images_per_s": round(args.batch_size / median, 1),
                f"ratio_to_{order[0]}": round(median / base, 3),
                "peak_memory_gib": round(peaks[name] / 2**30, 2) if name in peaks else None,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for what in ("eval", "train"):
        p = sub.add_parser(what)
        p.add_argument("--arch", default="vit-b-16")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--device", default="cuda")
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--iters", type=int, default=10)
        if what == "eval":
            p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
        else:
            p.add_argument("--objectives", nargs="+", default=["sparc", "clip"])
            p.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    results = [bench_eval(args)] if args.what == "eval" else bench_train(args)
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

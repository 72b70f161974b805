"""SPARC vs CLIP: training-step time and peak memory at equal model and batch, as ratios.

Both objectives train identical models (same preset, same initialisation) on the same batch through the
trainer's own `train_step` (forward, losses, backward, gradient clipping, fused AdamW). Steps are
interleaved in one process in ABBA order (SPARC, CLIP, CLIP, SPARC, ...) so that the machine's drift
(FINDINGS.md: separate runs differ by +-10%) hits both objectives alike. Time ratio: the median over
pairs of SPARC step / CLIP step. Memory: the peak tensor memory of one step of each objective,
accounted exactly by torch's MemTracker (torch.distributed._tools), in total and without the parameters
and AdamW state both share.

Example: python bench/train_overhead.py --batch-sizes 32 64 128 --reps 20
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
from rich.console import Console
from rich.table import Table

from sparc_eval.models.objectives import build_objective
from sparc_eval.models.sparc import create_model
from sparc_eval.train.loop import TrainConfig, make_optimizer, train_step

console = Console(width=160)  # the table is wider than a default 80-column pipe
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")


def synthetic_captions(n: int, seed: int) -> list[str]:
    """SynthScenes-like captions of 1-3 objects (about 8-25 tokens), so token masks look like training's."""
    rng = random.Random(seed)
    obj = lambda: f"a {rng.choice(('small', 'large'))} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"  # noqa: E731
    joins = (" left of ", " above ", " and ", ", next to ")
    out = []
    for _ in range(n):
        parts = [obj() for _ in range(rng.randint(1, 3))]
        text = parts[0]
        for p in parts[1:]:
            text += rng.choice(joins) + p
        out.append(text)
    return out


def make_runner(objective: str, arch: str, seed: int):
    torch.manual_seed(seed)
    model = create_model(arch).train()
    cfg = TrainConfig(data="", out="", arch=arch, objective=objective)
    return model, build_objective(objective), make_optimizer(model, cfg)


def step_fn(runner, images, tokens, bf16: bool):
    model, objective, optimizer = runner
    return lambda: train_step(model, objective, optimizer, images, tokens, grad_clip=1.0, bf16=bf16)


def peak_step_memory_mb(runner, fn) -> tuple[float, float]:
    """Peak tensor memory during one call of `fn`, in MB: (total, total minus parameters and optimizer state).

    torch's MemTracker (a dispatch mode that accounts every tensor storage as it is created and freed)
    gives exact, repeatable figures on CPU. tracemalloc cannot see torch's C++ allocations, and the
    profiler's CPU memory timeline misses blocks allocated before profiling started (the previous
    step's gradients), which made its peaks inconsistent from one batch size to the next.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    model, _, optimizer = runner
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        fn()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    fixed = sum(v for k, v in peak.items() if str(getattr(k, "value", k)) in ("Parameter", "Optstate"))
    return peak["Total"] / 1e6, (peak["Total"] - fixed) / 1e6


def objective_seconds(runners: dict, images: torch.Tensor, tokens: torch.Tensor, reps: int) -> dict[str, float]:
    """Median seconds of each objective's forward + backward alone, on fixed model outputs (interleaved).

    The step-time ratio carries the machine's noise; this isolates the part SPARC adds to every step.
    """
    model = runners["sparc"][0]
    with torch.no_grad():
        out = model(images, tokens)
    times = {name: [] for name in runners}
    for rep in range(reps + 2):
        for name in ("sparc", "clip") if rep % 2 == 0 else ("clip", "sparc"):
            leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in out.items()}
            start = time.perf_counter()
            runners[name][1](leaves)["total"].backward()
            if rep >= 2:  # the first two rounds warm up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(batch: int, arch: str, reps: int, bf16: bool, seed: int) -> dict:
    sparc, clip = make_runner("sparc", arch, seed), make_runner("clip", arch, seed)
    size = sparc[0].config["preprocess"]["size"]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    tokens = sparc[0].tokenize(synthetic_captions(batch, seed))
    steps = {"sparc": step_fn(sparc, images, tokens, bf16), "clip": step_fn(clip, images, tokens, bf16)}
    for fn in steps.values():  # warm-up: optimizer state, kernel selection
        fn()
        fn()
    times = {"sparc": [], "clip": []}
    for rep in range(reps):
        order = ("sparc", "clip") if rep % 2 == 0 else ("clip", "sparc")
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    runners = {"sparc": sparc, "clip": clip}
    memory = {name: peak_step_memory_mb(runners[name], fn) for name, fn in steps.items()}
    loss_s = objective_seconds(runners, images, tokens, reps)
    clip_s = statistics.median(times["clip"])
    return {
        "batch_size": batch,
        "clip_s": clip_s,
        "sparc_s": statistics.median(times["sparc"]),
        "time_ratio": statistics.median(s / c for s, c in zip(times["sparc"], times["clip"])),
        "clip_loss_ms": 1000 * loss_s["clip"],
        "sparc_loss_ms": 1000 * loss_s["sparc"],
        "loss_overhead": (loss_s["sparc"] - loss_s["clip"]) / clip_s,
        "clip_peak_mb": memory["clip"][0],
        "sparc_peak_mb": memory["sparc"][0],
        "memory_ratio": memory["sparc"][0] / memory["clip"][0],
        "clip_step_mb": memory["clip"][1],
        "sparc_step_mb": memory["sparc"][1],
        "step_memory_ratio": memory["sparc"][1] / memory["clip"][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python bench/train_overhead.py --batch-sizes 32 64 128 --reps 20",
    )
    parser.add_argument("--arch", default="tiny", help="model preset or open_clip architecture (default tiny)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--reps", type=int, default=20, help="timed steps per objective and batch size")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the towers, as `train --bf16`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()

    rows = [measure(b, args.arch, args.reps, args.bf16, args.seed) for b in args.batch_sizes]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        title=f"SPARC vs CLIP training step, {args.arch}, {'bf16' if args.bf16 else 'fp32'}, "
        f"{torch.get_num_threads()} threads, {args.reps} interleaved steps each"
    )
    columns = (
        "batch",
        "CLIP s",
        "SPARC s",
        "time x",
        "loss ms CLIP / SPARC",
        "loss share",
        "peak MB CLIP / SPARC",
        "peak x",
        "step x",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["batch_size"]),
            f"{r['clip_s']:.3f}",
            f"{r['sparc_s']:.3f}",
            f"{r['time_ratio']:.3f}",
            f"{r['clip_loss_ms']:.1f} / {r['sparc_loss_ms']:.1f}",
            f"{r['loss_overhead']:.3f}",
            f"{r['clip_peak_mb']:.0f} / {r['sparc_peak_mb']:.0f}",
            f"{r['memory_ratio']:.3f}",
            f"{r['step_memory_ratio']:.3f}",
        )
    console.print(table)
    console.print(
        "s: median seconds per training step (ABBA-interleaved); x: SPARC / CLIP. loss ms: one objective's forward +\n"
        "backward alone; loss share: (SPARC - CLIP loss time) / CLIP step time. peak: MB of all tensors alive at the\n"
        "step's peak (MemTracker); step x: the same ratio without the parameters and AdamW state both share."
    )


if __name__ == "__main__":
    main()

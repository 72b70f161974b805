"""Compute of one training step per objective, as a ratio to CLIP (the SPARC paper's Table 11 / Figure 4).

For CLIP, SPARC, FILIP, PACL, GLoRIA and MGCA (paper defaults), at batch sizes 32 ... 1024, with two tower set-ups:
the tiny preset (64 px, patch 8: 64 patches) and the paper's ViT-B/16 (224 px, patch 16: 196 patches). Each
caption has --words real tokens (SynthScenes captions have 8-25).

- FLOPs: torch.utils.flop_counter.FlopCounterMode over forward + backward of the towers and the objective (every
  matmul, bmm, einsum and convolution; elementwise work is not counted), exactly, on meta tensors: shapes only,
  nothing is computed, so every batch size fits.
- Peak memory: the peak of live tensor memory during forward + backward (parameters, gradients, activations,
  temporaries; the optimizer's state is the same for every objective and left out), accounted by torch's
  MemTracker on the same meta tensors. Attention runs the math kernel throughout, so the count does not depend on
  which fused kernel a device would pick; on CPU a real step gives exactly the same figure (checked at the smallest
  batch with --check-real).
- Step time: measured for real (forward, loss, backward, gradient clipping, AdamW) only where a 2-core CPU can run
  it: the tiny preset at --time-batch-sizes, interleaved round-robin over the objectives (--reps rounds), median
  of each objective's steps over the median of CLIP's.

Writes OUT.json and the Figure-4-style plot OUT.png, prints the Markdown tables.

Example: nice -n 10 python bench/objective_compute.py --out docs/img/objective_compute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sparc_eval.models.objectives import build_objective
from sparc_eval.models.sparc import create_model
from sparc_eval.train.loop import TrainConfig, make_optimizer, train_step

OBJECTIVES = ("clip", "sparc", "filip", "pacl", "gloria", "mgca")
SETUPS = {"tiny, 64 patches": "tiny", "ViT-B/16, 196 patches": "vit-b-16"}


def build(name: str, arch: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    objective = build_objective(name)
    torch.manual_seed(0)
    with torch.device(device):
        model = create_model(arch, **getattr(objective, "MODEL_CONFIG", {})).train()
        if hasattr(objective, "setup"):
            objective.setup(model)
    return model, objective.to(device)


def batch(arch_model: torch.nn.Module, size: int, words: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images, and tokens: start marker, `words` word pieces, end marker, padding (the same for every objective)."""
    config = arch_model.config
    image = config["preprocess"]["size"]
    context = config["tokenizer"]["context_length"]
    g = torch.Generator().manual_seed(size)
    tokens = torch.zeros(size, context, dtype=torch.long)
    tokens[:, 0] = arch_model.tokenizer.sot_token_id
    tokens[:, 1 : 1 + words] = torch.randint(300, 40000, (size, words), generator=g)
    tokens[:, 1 + words] = arch_model.tokenizer.eot_token_id
    images = torch.randn(size, 3, image, image, generator=g)
    return images.to(device), tokens.to(device)


_BUILT: dict[tuple[str, str, str], tuple[torch.nn.Module, torch.nn.Module]] = {}


def count_step(name: str, arch: str, size: int, words: int, device: str = "meta") -> tuple[int, int]:
    """(FLOPs, peak bytes) of forward + backward of one step."""
    if (name, arch, device) not in _BUILT:  # building the towers and tokenizer costs more than counting a step
        _BUILT[(name, arch, device)] = build(name, arch, device)
    model, objective = _BUILT[(name, arch, device)]
    for param in [*model.parameters(), *objective.parameters()]:
        param.grad = None  # every count starts without gradients, as a training step after zero_grad does
    images, tokens = batch(model, size, words, device)
    flops = FlopCounterMode(display=False)
    tracker = MemTracker()
    tracker.track_external(model, objective)
    with tracker, flops, sdpa_kernel(SDPBackend.MATH):
        out = model(images, tokens)
        if device == "meta":
            # Meta tensors hold no values: the real-token mask (start marker excluded, end marker and padding
            # excluded) is rebuilt from the known layout of `batch`.
            mask = torch.zeros(tokens.shape, dtype=torch.bool)
            mask[:, 1 : 1 + words] = True
            out["token_mask"] = mask.to(device)
            out["token_emb"] = out["token_emb"][:, : 1 + words]
            out["token_mask"] = out["token_mask"][:, : 1 + words]
        objective(out)["total"].backward()
    return flops.get_total_flops(), int(tracker.get_tracker_snapshot("peak")[torch.device(device)]["Total"])


def time_steps(arch: str, size: int, words: int, reps: int) -> dict[str, float]:
    """Median seconds per real training step for each objective, interleaved round-robin."""
    runners = {}
    for name in OBJECTIVES:
        model, objective = build(name, arch, "cpu")
        cfg = TrainConfig(data="", out="", arch=arch, objective=name)
        optimizer = make_optimizer(torch.nn.ModuleList([model, objective]), cfg)
        runners[name] = (model, objective, optimizer)
    images, tokens = batch(runners["clip"][0], size, words, "cpu")
    times: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
    for rep in range(reps + 1):  # round 0 warms up
        order = OBJECTIVES if rep % 2 == 0 else OBJECTIVES[::-1]
        for name in order:
            model, objective, optimizer = runners[name]
            start = time.perf_counter()
            train_step(model, objective, optimizer, images, tokens, grad_clip=1.0, bf16=False)
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for row, setup in enumerate(SETUPS):
        data = results["count"][setup]
        sizes = sorted(int(b) for b in data)
        for col, (key, what) in enumerate((("flops", "FLOPs"), ("memory", "peak memory"))):
            ax = axes[row][col]
            for name in OBJECTIVES[1:]:
                rel = [100 * (data[str(b)][name][key] / data[str(b)]["clip"][key] - 1) for b in sizes]
                ax.plot(sizes, rel, marker="o", label=name.upper() if name != "gloria" else "GLoRIA")
            ax.set_xscale("log", base=2)
            ax.set_yscale("symlog", linthresh=0.1, linscale=0.5)
            ticks = [t for t in (-1, -0.1, 0, 0.1, 1, 10, 100, 1000) if t < 3 * max(1.0, ax.get_ylim()[1])]
            ax.set_yticks(ticks, [f"{t:+g} %" if t else "0" for t in ticks])
            ax.set_ylim(-1, None)
            ax.axhline(1, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{what} per step, {setup}")
            ax.set_ylabel("% more than CLIP")
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("batch size")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Training-step cost relative to CLIP (dotted: +1 %); counted on meta tensors", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict) -> str:
    lines = []
    for setup, data in results["count"].items():
        lines += [
            f"**{setup}** (FLOPs and peak memory of forward + backward, ratio to CLIP; counted on meta tensors):",
            "",
            "| batch | CLIP GFLOPs | "
            + " | ".join(f"{n} FLOPs" for n in OBJECTIVES[1:])
            + " | "
            + " | ".join(f"{n} memory" for n in OBJECTIVES[1:])
            + " |",
            "|---:|---:|" + "---:|" * (2 * (len(OBJECTIVES) - 1)),
        ]
        for b in sorted(data, key=int):
            d = data[b]
            flops = [f"{d[n]['flops'] / d['clip']['flops']:.4f}" for n in OBJECTIVES[1:]]
            mem = [f"{d[n]['memory'] / d['clip']['memory']:.3f}" for n in OBJECTIVES[1:]]
            lines.append(f"| {b} | {d['clip']['flops'] / 1e9:,.0f} | " + " | ".join(flops + mem) + " |")
        lines.append("")
    if results.get("time"):
        lines += [
            "**Step time** (tiny preset, real steps on the CPU, median ratio to CLIP, interleaved):",
            "",
            "| batch | CLIP s/step | " + " | ".join(OBJECTIVES[1:]) + " |",
            "|---:|---:|" + "---:|" * (len(OBJECTIVES) - 1),
        ]
        for b, t in sorted(results["time"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {b} | {t['clip']:.2f} | " + " | ".join(f"{t[n] / t['clip']:.2f}" for n in OBJECTIVES[1:]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--time-batch-sizes", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--words", type=int, default=16, help="real tokens per caption")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--check-real", action="store_true", help="also count the smallest tiny batch on real CPU tensors")
    parser.add_argument("--out", type=Path, default=Path("docs/img/objective_compute"))
    parser.add_argument("--replot", type=Path, help="only redraw the plot and tables from an earlier run's JSON")
    args = parser.parse_args()

    if args.replot:
        results = json.loads(args.replot.read_text(encoding="utf-8"))
        plot(results, args.out.with_suffix(".png"))
        print(markdown(results))
        return
    results: dict = {"words": args.words, "count": {}, "time": {}}
    for setup, arch in SETUPS.items():
        results["count"][setup] = {}
        for size in args.batch_sizes:
            row = {}
            for name in OBJECTIVES:
                flops, memory = count_step(name, arch, size, args.words)
                row[name] = {"flops": flops, "memory": memory}
            results["count"][setup][str(size)] = row
            print(
                f"{setup} batch {size}: " + ", ".join(f"{n} {row[n]['flops'] / row['clip']['flops']:.4f}" for n in OBJECTIVES),
                flush=True,
            )
    if args.check_real:
        size = min(args.batch_sizes)
        for name in OBJECTIVES:
            real = count_step(name, "tiny", size, args.words, device="cpu")
            meta = results["count"]["tiny, 64 patches"][str(size)][name]
            results.setdefault("check_real", {})[name] = {"real": real, "meta": [meta["flops"], meta["memory"]]}
            print(f"check {name} batch {size}: real {real}, meta {meta['flops'], meta['memory']}", flush=True)
    for size in args.time_batch_sizes:
        results["time"][str(size)] = time_steps("tiny", size, args.words, args.reps)
        print(f"time batch {size}: {results['time'][str(size)]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, args.out.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()

"""Feature cache: scoring a checkpoint again on two tasks that share a split, as a ratio to the first scoring.

Two task cards read the same SynthScenes val images: synth-cls (the dataset's 5 prompt templates) and a copy
with another template set (--templates; default the 80 CLIP ImageNet templates, "openai-imagenet"), i.e. two
zero-shot classifiers of the same images. Each repetition, in a fresh results folder:

- cold: the first scoring of both tasks (the second task already reuses the first one's image embeddings);
- warm: both again with --force (records recomputed; image embeddings and classifier prompts from the cache);
- no cache: both with --no-cache (every embedding computed), for reference.

Reported: medians of the evaluation time (the record's wall_time_s: everything after loading the model) and of
the whole `run_evaluation` call, per task and together, and the ratios warm / cold and warm / no cache.
Records of all three are checked to hold the same metrics.

Example: python bench/feature_cache.py --ckpt openclip:ViT-B-32 --n-val 64 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.splitlines()[-1])
    parser.add_argument("--ckpt", default="openclip:ViT-B-32", help="checkpoint reference (default: random-init ViT-B-32)")
    parser.add_argument("--n-val", type=int, default=64, help="SynthScenes val images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--templates", default="openai-imagenet", help="template set of the second card (openai-imagenet, simple)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SPARC_EVAL_NO_PROGRESS", "1")
    os.environ.pop("SPARC_EVAL_CACHE", None)
    import torch

    from sparc_eval.data.synth import generate_synthscenes
    from sparc_eval.evaluation import run_evaluation
    from sparc_eval.tasks.card import load_card, write_card_variant

    load = os.getloadavg()[0]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    metrics: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = load_card("synth-cls")
        tree = source.synthscenes_dir(tmp / "data")
        tree.parent.mkdir()
        generate_synthscenes(tree, seed=0, n_train=8, n_val=args.n_val, image_size=args.image_size, workers=1)
        variant = write_card_variant(
            source.path,
            tmp / "synth-cls-variant.yaml",
            f"synth-cls with template set {args.templates} (bench/feature_cache.py)",
            params={"templates": args.templates},
        )
        tasks = {"synth-cls": "synth-cls", f"same split, {args.templates}": str(variant)}

        def score(phase: str, out: Path, **kw) -> None:
            for name, task in tasks.items():
                start = time.perf_counter()
                record = run_evaluation(
                    args.ckpt,
                    task,
                    out=out,
                    data_dir=tmp / "data",
                    batch_size=args.batch_size,
                    num_workers=args.workers,
                    force=True,
                    **kw,
                ).record
                times.setdefault((phase, name), []).append((record.wall_time_s, time.perf_counter() - start))
                metrics[(phase, name)] = record.metric_values()
                console.print(f"{phase:>8}  {name}: evaluation {record.wall_time_s:.1f} s")

        for rep in range(args.reps):
            out = tmp / f"results{rep}"
            score("cold", out)
            score("warm", out)
            score("no cache", tmp / f"plain{rep}", cache=False)

    names = list(tasks)
    rows = []
    for phase in ("cold", "warm", "no cache"):
        row: dict = {"scoring": phase}
        for name in names:
            row[f"{name} eval s"] = statistics.median(t for t, _ in times[(phase, name)])
        row["both eval s"] = sum(row[f"{name} eval s"] for name in names)
        row["both calls s"] = sum(statistics.median(c for _, c in times[(phase, name)]) for name in names)
        rows.append(row)
    cold, warm, plain = rows
    same = all(metrics[("cold", n)] == metrics[("warm", n)] == metrics[("no cache", n)] for n in names)
    table = Table(title=f"{args.ckpt}, {args.n_val} images, {torch.get_num_threads()} threads (medians of {args.reps})")
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()])
    console.print(table)
    ratio = warm["both eval s"] / cold["both eval s"]
    console.print(
        f"second scoring / first: {ratio:.3f} (evaluation), {warm['both calls s'] / cold['both calls s']:.3f} (whole calls); "
        f"second / no cache: {warm['both eval s'] / plain['both eval s']:.3f}; metrics identical: {same}; "
        f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio_warm_cold": ratio, "metrics_identical": same}, indent=2))


if __name__ == "__main__":
    main()

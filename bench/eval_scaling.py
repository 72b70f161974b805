"""Distributed evaluation: one task on 1 process vs 2 processes (torchrun, gloo, one intra-op thread each).

Each configuration runs `sparc-eval run` as a user would (1 process: `python -m sparc_eval run`; 2 processes:
`torchrun --standalone --nproc-per-node 2 -m sparc_eval run`), with OMP_NUM_THREADS=1, the feature cache
off (--no-cache) and --force, in interleaved repetitions (1, 2, 1, 2, ...), so that drift in the machine's
load hits both alike. Reported: the medians of the command's wall time and of the record's evaluation time
(wall_time_s, rank 0), the CPU seconds of all the processes a command started (load-independent: what the second
process adds in work), the speed-up ratios, and whether the two records hold the same metrics.

Example: python bench/eval_scaling.py --ckpt openclip:ViT-B-32 --task synth-cls --n-val 96 --reps 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPARC_EVAL_CACHE"}
    return {**env, "OMP_NUM_THREADS": "1", "SPARC_EVAL_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


def _run(procs: int, args: list[str], out: Path) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of every process it started, rank 0's record) of one `sparc-eval run`."""
    launcher = [sys.executable, "-m", "sparc_eval"]
    if procs > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
            "-m",
            "sparc_eval",
        ]
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([*launcher, "run", *args, "--out", str(out), "--json"], env=_env(), capture_output=True, text=True)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed:\n{done.stderr[-3000:]}")
    return seconds, cpu, json.loads(done.stdout)[0]


def _same_metrics(a: dict, b: dict) -> bool:
    for name, metric in a["metrics"].items():
        x, y = metric["value"], b["metrics"][name]["value"]
        if (x is None) != (y is None) or (x is not None and not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.splitlines()[-1])
    parser.add_argument("--ckpt", default="openclip:ViT-B-32", help="checkpoint reference (default: random-init ViT-B-32)")
    parser.add_argument("--task", default="synth-cls", help="a SynthScenes task card")
    parser.add_argument("--n-val", type=int, default=96, help="SynthScenes val / test images")
    parser.add_argument("--image-size", type=int, default=64, help="SynthScenes image side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each configuration (median)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sparc_eval.data.synth import generate_synthscenes
    from sparc_eval.tasks.card import load_card

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "data"
        tree = tmp / "tree"
        generate_synthscenes(tree, seed=0, n_train=8, n_val=args.n_val, image_size=args.image_size, workers=1)
        data_dir.mkdir()
        load_card(args.task).synthscenes_dir(data_dir).symlink_to(tree, target_is_directory=True)
        common = ["--task", args.task, "--ckpt", args.ckpt, "--data-dir", str(data_dir), "--batch-size", str(args.batch_size)]
        common += ["--num-workers", "0", "--no-cache", "--force"]
        times: dict[int, list[float]] = {1: [], 2: []}
        cpus: dict[int, list[float]] = {1: [], 2: []}
        evals: dict[int, list[float]] = {1: [], 2: []}
        records: dict[int, dict] = {}
        for rep in range(args.reps):
            for procs in (1, 2):
                seconds, cpu, record = _run(procs, common, tmp / f"out{procs}")
                times[procs].append(seconds)
                cpus[procs].append(cpu)
                evals[procs].append(record["wall_time_s"])
                records[procs] = record
                console.print(f"rep {rep + 1}: {procs} process(es) {seconds:.1f} s (evaluation {record['wall_time_s']:.1f} s)")
    rows = []
    for procs in (1, 2):
        rows.append(
            {
                "processes": procs,
                "world_size (record)": records[procs]["world_size"],
                "command_s": statistics.median(times[procs]),
                "evaluation_s": statistics.median(evals[procs]),
                "cpu_s_all_processes": statistics.median(cpus[procs]),
                "images": records[procs]["n_samples"],
            }
        )
    speedup_cmd = rows[0]["command_s"] / rows[1]["command_s"]
    speedup_eval = rows[0]["evaluation_s"] / rows[1]["evaluation_s"]
    same = _same_metrics(records[1], records[2])
    table = Table(title=f"{args.task} on {args.ckpt}: 1 vs 2 processes (gloo, 1 thread each)")
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*[f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()])
    console.print(table)
    console.print(
        f"speed-up 2 vs 1 process: {speedup_eval:.2f}x evaluation, {speedup_cmd:.2f}x whole command; "
        f"metrics identical: {same}; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    console.print(
        f"CPU seconds, 2 processes / 1: {rows[1]['cpu_s_all_processes'] / rows[0]['cpu_s_all_processes']:.2f} "
        "(the work distribution adds; on a loaded machine wall-clock ratios also carry each configuration's share of the CPUs)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": rows, "speedup_evaluation": speedup_eval, "speedup_command": speedup_cmd, "metrics_identical": same},
                indent=2,
            )
        )
    if not same:
        raise SystemExit("the 1- and 2-process records hold different metrics")


if __name__ == "__main__":
    main()

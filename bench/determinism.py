"""What a seed reproduces on CPU: tiny-clip training under one setting change at a time, weight hashes compared.

Each configuration trains the tiny-clip card's recipe (arch tiny, objective clip, batch 128, lr 5e-4,
warm-up 20, weight decay 0.1, seed 0) for `--steps` steps with `sparc-eval train` in a fresh process
with its own environment (thread count, ATen CPU capability, MKL code path, oneDNN ISA, deterministic
algorithms, a concurrent CPU load). The table gives the sha256 of model.safetensors, the last logged
loss, and the largest absolute weight difference from the baseline run, so "same bits" and "how far
apart" are both visible.

Example: nice -n 10 python bench/determinism.py --steps 20 --n-train 1024 --out /tmp/determinism
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# (label, extra environment, use_deterministic_algorithms, run a concurrent CPU hog). The first is the baseline.
CONFIGS: list[tuple[str, dict[str, str], bool, bool]] = [
    ("baseline (2 threads)", {"OMP_NUM_THREADS": "2"}, False, False),
    ("baseline again", {"OMP_NUM_THREADS": "2"}, False, False),
    ("1 thread", {"OMP_NUM_THREADS": "1"}, False, False),
    ("1 thread again", {"OMP_NUM_THREADS": "1"}, False, False),
    ("deterministic algorithms", {"OMP_NUM_THREADS": "2"}, True, False),
    ("ATEN_CPU_CAPABILITY=avx2", {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2"}, False, False),
    ("ATEN_CPU_CAPABILITY=default", {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "default"}, False, False),
    ("MKL_CBWR=AVX2", {"OMP_NUM_THREADS": "2", "MKL_CBWR": "AVX2"}, False, False),
    ("MKL_CBWR=COMPATIBLE", {"OMP_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"}, False, False),
    ("ONEDNN_MAX_CPU_ISA=AVX2", {"OMP_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, False, False),
    ("2 threads + CPU hog", {"OMP_NUM_THREADS": "2"}, False, True),
    ("2 threads + CPU hog, MKL_DYNAMIC=FALSE", {"OMP_NUM_THREADS": "2", "MKL_DYNAMIC": "FALSE"}, False, True),
    ("1 thread + CPU hog", {"OMP_NUM_THREADS": "1"}, False, True),
    (
        "portable: 1 thread, avx2, MKL_CBWR=AVX2, oneDNN AVX2",
        {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        False,
        False,
    ),
    (
        "portable + CPU hog",
        {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        False,
        True,
    ),
]

# Runs `sparc-eval train` in-process after optionally switching on deterministic algorithms.
_CHILD = """
import sys, torch
if sys.argv[1] == "1":
    torch.use_deterministic_algorithms(True)
from sparc_eval.cli.main import main
main(sys.argv[2:])
"""

_HOG = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def train(out: Path, data: Path, steps: int, env: dict[str, str], deterministic: bool, hog: bool) -> dict:
    args = [
        *("train", "--data", str(data), "--out", str(out), "--arch", "tiny", "--objective", "clip"),
        *("--steps", str(steps), "--batch-size", "128", "--lr", "0.0005", "--warmup", "20", "--weight-decay", "0.1"),
        *("--seed", "0", "--log-every", str(steps)),
    ]
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG]) for _ in range(2 if hog else 0)]
    started = time.perf_counter()
    try:
        subprocess.run(
            [sys.executable, "-c", _CHILD, "1" if deterministic else "0", *args],
            env={**os.environ, "SPARC_EVAL_NO_PROGRESS": "1", **env},
            check=True,
            capture_output=True,
        )
    finally:
        for proc in hogs:
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - started
    from sparc_eval.fileio import sha256_file

    last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    return {"sha256": sha256_file(out / "model.safetensors"), "loss": last["loss"], "seconds": seconds}


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sparc-determinism"))
    parser.add_argument("--only", nargs="*", help="Run only configurations whose label starts with one of these.")
    args = parser.parse_args()

    from sparc_eval.data.synth import ensure_synthscenes
    from sparc_eval.provenance import numerics

    data = ensure_synthscenes(args.out / "data", seed=0, n_train=args.n_train, n_val=64, image_size=64)
    console = Console()
    console.print(f"{numerics()}", highlight=False)
    rows = []
    base_dir = None
    for i, (label, env, deterministic, hog) in enumerate(CONFIGS):
        if args.only and i and not any(label.startswith(p) for p in args.only):
            continue
        out = args.out / f"run{i:02d}"
        if (out / "model.safetensors").is_file():
            import shutil

            shutil.rmtree(out)
        result = train(out, data, args.steps, env, deterministic, hog)
        base_dir = base_dir or out
        result["max_abs_diff"] = max_abs_diff(base_dir, out)
        rows.append((label, result))
        console.print(f"{label}: {result}", highlight=False)
    table = Table(title=f"tiny-clip, {args.steps} steps, seed 0: one setting changed at a time")
    for column in ("configuration", "weights sha256", "last loss", "max |Δw| vs baseline", "seconds"):
        table.add_column(column)
    for label, r in rows:
        table.add_row(label, r["sha256"][:8], f"{r['loss']:.6f}", f"{r['max_abs_diff']:.2e}", f"{r['seconds']:.0f}")
    console.print(table)
    (args.out / "determinism.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Where does SPARC's fine-grained loss help attribute binding, relations or counting? synth-binding over CLIP/SPARC
checkpoint pairs and seeds, with a paired test per negative type.

Every checkpoint is a checkpoint card's recipe with its seed replaced, trained through the checkpoint-card path
under --ckpt-root (so a folder trained before, by this script or by the card loader with the same root, is
reused), unless a --reuse file maps (card, seed) to a folder already trained elsewhere. Each is scored on
synth-binding (records under OUT/results, reused when nothing changed). For each pair and seed, per type: both
accuracies, the discordant entries (right for one model only) and the two-sided exact McNemar p-value that
`sparc-eval regress` uses (sparc_eval.results.regress); for the mean over types, a 95% interval of the SPARC -
CLIP difference from a paired bootstrap over test images (entries of one image resampled together). Prints
Markdown tables and writes OUT/binding.json. The CPU time of each synth-binding evaluation is recorded too (the
quickstart's budget).

Example: python bench/binding.py --pairs tiny-clip:tiny-sparc tiny-clip-1k:tiny-sparc-1k --seeds 0 1 \\
    --ckpt-root runs/binding/checkpoints --reuse runs/like-for-like/CHECKPOINTS.json --data-dir data --out runs/binding
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from sparc_eval.checkpoint_cards import ensure_checkpoint, load_checkpoint_card
from sparc_eval.data.synth_negatives import NEGATIVE_TYPES
from sparc_eval.evaluation import run_evaluation
from sparc_eval.fileio import write_json_atomic
from sparc_eval.results.record import load_samples
from sparc_eval.results.regress import _mcnemar

TASK = "synth-binding"


def reused_folders(paths: list[Path]) -> dict[tuple[str, int], Path]:
    """(card, seed) -> checkpoint folder from JSON files keyed "card/seed" or {card: {seed: folder}}."""
    found: dict[tuple[str, int], Path] = {}
    for path in paths:
        if not path.is_file():
            print(f"(no {path}: nothing reused from it)")
            continue
        for key, value in json.loads(path.read_text()).items():
            if isinstance(value, dict):
                found.update({(key, int(seed)): Path(folder) for seed, folder in value.items()})
            else:
                card, _, seed = key.rpartition("/")
                found[(card, int(seed))] = Path(value)
    return found


def checkpoint(card_name: str, seed: int, root: Path, data_dir: Path, reuse: dict) -> Path:
    if (card_name, seed) in reuse and (reuse[(card_name, seed)] / "config.json").is_file():
        return reuse[(card_name, seed)]
    card = load_checkpoint_card(card_name).with_overrides(train={"seed": seed})
    return ensure_checkpoint(card, root=root, data_dir=data_dir)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers), all threads."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def score(folder: Path, out: Path, data_dir: Path) -> tuple[dict, list[dict], float | None]:
    started = cpu_seconds()
    evaluation = run_evaluation(str(folder), TASK, out=out / "results", data_dir=data_dir, batch_size=128)
    cpu = None if evaluation.reused else round(cpu_seconds() - started, 1)  # None: the record was reused
    metrics = {k: m.value for k, m in evaluation.record.metrics.items()}
    return metrics, load_samples(evaluation.path, evaluation.record), cpu


def mean_interval(clip: list[dict], sparc: list[dict], rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    """95% percentile interval of mean-over-types accuracy, SPARC - CLIP, resampling images with replacement."""
    images = sorted({s["image"] for s in clip})
    index = {image: i for i, image in enumerate(images)}
    types = sorted({s["type"] for s in clip})
    # right[model][type] as per-image sums and counts, so a resample is a weighted sum
    right = np.zeros((2, len(types), len(images)))
    count = np.zeros((len(types), len(images)))
    sparc_by_id = {s["id"]: s for s in sparc}
    for s in clip:
        t, i = types.index(s["type"]), index[s["image"]]
        right[0, t, i] += s["correct"]
        right[1, t, i] += sparc_by_id[s["id"]]["correct"]
        count[t, i] += 1
    deltas = []
    for _ in range(n):
        w = np.bincount(rng.integers(0, len(images), len(images)), minlength=len(images))
        acc = (right * w).sum(-1) / np.maximum((count * w).sum(-1), 1)
        deltas.append(acc[1].mean() - acc[0].mean())
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def compare(clip: list[dict], sparc: list[dict]) -> dict[str, dict]:
    sparc_by_id = {s["id"]: s for s in sparc}
    assert set(sparc_by_id) == {s["id"] for s in clip}, "the two records hold different entries"
    out = {}
    for t in NEGATIVE_TYPES:
        ids = [s["id"] for s in clip if s["type"] == t]
        a = np.array([s["correct"] for s in clip if s["type"] == t], bool)
        b = np.array([sparc_by_id[i]["correct"] for i in ids], bool)
        out[t] = {
            "n": len(ids),
            "clip": float(a.mean()),
            "sparc": float(b.mean()),
            "sparc_only": int((b & ~a).sum()),
            "clip_only": int((a & ~b).sum()),
            "mcnemar_p": _mcnemar(a, b),
        }
    return out


def joined(values) -> str:
    """Per-seed values in one table cell: "a / b"."""
    return " / ".join(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=["tiny-clip:tiny-sparc", "tiny-clip-1k:tiny-sparc-1k"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ckpt-root", type=Path, default=Path("runs/binding/checkpoints"))
    parser.add_argument("--reuse", type=Path, nargs="*", default=[])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("runs/binding"))
    args = parser.parse_args()
    reuse = reused_folders(args.reuse)
    rng = np.random.default_rng(0)
    report: dict = {"pairs": {}, "cpu_seconds": {}, "checkpoints": {}}
    for pair in args.pairs:
        clip_card, sparc_card = pair.split(":")
        rows = report["pairs"][pair] = {}
        for seed in args.seeds:
            results = {}
            for card in (clip_card, sparc_card):
                folder = checkpoint(card, seed, args.ckpt_root, args.data_dir, reuse)
                report["checkpoints"][f"{card}/{seed}"] = str(folder)
                metrics, samples, cpu = score(folder, args.out, args.data_dir)
                results[card] = (metrics, samples)
                report["cpu_seconds"][f"{card}/{seed}"] = cpu
                spent = "record reused" if cpu is None else f"{cpu:.0f} CPU-s"
                print(f"{card} seed {seed}: acc_mean {metrics['acc_mean']:.3f} ({folder}; {spent})", flush=True)
            (cm, cs), (sm, ss) = results[clip_card], results[sparc_card]
            rows[seed] = {
                "types": compare(cs, ss),
                "mean": {"clip": cm["acc_mean"], "sparc": sm["acc_mean"], "interval": mean_interval(cs, ss, rng)},
            }
        print(f"\n{pair}, seeds {' / '.join(map(str, args.seeds))} (chance 0.5 on every type)\n")
        print("| type | n | CLIP | SPARC | SPARC-only – CLIP-only right | McNemar p |")
        print("|---|---:|---:|---:|---:|---:|")
        for t in NEGATIVE_TYPES:
            cells = [rows[s]["types"][t] for s in args.seeds]
            print(
                "| "
                + " | ".join(
                    [
                        t,
                        joined(str(c["n"]) for c in cells),
                        joined(f"{c['clip']:.3f}" for c in cells),
                        joined(f"{c['sparc']:.3f}" for c in cells),
                        joined(f"{c['sparc_only']}–{c['clip_only']}" for c in cells),
                        joined(f"{c['mcnemar_p']:.2g}" for c in cells),
                    ]
                )
                + " |"
            )
        means = [rows[s]["mean"] for s in args.seeds]
        interval = joined(f"{m['interval'][0]:+.3f}…{m['interval'][1]:+.3f}" for m in means)
        print(
            "| mean over types | | "
            + joined(f"{m['clip']:.3f}" for m in means)
            + " | "
            + joined(f"{m['sparc']:.3f}" for m in means)
            + f" | Δ 95% interval {interval} | |"
        )
    write_json_atomic(args.out / "binding.json", report)
    print(f"\nwrote {args.out / 'binding.json'}")


if __name__ == "__main__":
    main()

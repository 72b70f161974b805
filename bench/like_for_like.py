"""The SPARC paper's like-for-like comparison on SynthScenes: CLIP, SPARC, FILIP, PACL, GLoRIA and MGCA, each
trained from its checkpoint card (same towers, data, steps, batch, learning rate; only the objective differs)
on several seeds, scored on every SynthScenes task card, and published with one row per recipe (mean, spread
and number of seeds) in leaderboard/like-for-like/.

Stages, each reusing what an earlier run left (checkpoints by recipe hash, records whose inputs all match):
  train     every (card, seed); OUT/CHECKPOINTS.json maps "card/seed" to its folder as soon as each one exists
            (the later stages read that file when train is not among the stages)
  score     every checkpoint on every task card named synth-* (or tagged synthscenes)
  det       synth-det once more with the backbone fine-tuned (train_backbone: true) for tiny-clip and tiny-sparc,
            seed 0, into OUT/results-det-backbone (heads on a frozen backbone is the default protocol)
  bidir     tiny-sparc with a bidirectional text tower (text_attention: bidirectional) on --seeds, scored on
            synth-grounding (the position shortcut: fine loss on matched vs mismatched pairs), synth-cls and
            synth-retrieval, into OUT/results-bidirectional; the causal tiny-sparc of the same seeds beside it
  publish   the seed-aggregated table as page, Markdown and CSV, the per-seed CSV, and paired-tests.md (each
            objective against CLIP over the same test images), into --publish-dir

Training cost per recipe is read from each checkpoint's config.json (train_seconds, threads) and printed with the table.

Example: nice -n 10 python bench/like_for_like.py --seeds 0 1 --out runs/like-for-like --publish-dir leaderboard/like-for-like
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sparc_eval.checkpoint_cards import ensure_checkpoint, load_checkpoint_card
from sparc_eval.evaluation import run_evaluation
from sparc_eval.fileio import write_json_atomic
from sparc_eval.tasks.card import find_card, list_card_paths, load_card, write_card_variant

CARDS = ("tiny-clip", "tiny-sparc", "tiny-filip", "tiny-pacl", "tiny-gloria", "tiny-mgca")
STAGES = ("train", "score", "det", "bidir", "publish")
BIDIR_TASKS = ("synth-grounding", "synth-cls", "synth-retrieval")
DET_BACKBONE_CARDS = ("tiny-clip", "tiny-sparc")


def synth_task_cards() -> list[Path]:
    """Every task card on SynthScenes: named synth-* or tagged synthscenes."""
    found = []
    for path in list_card_paths():
        card = load_card(path)
        if card.name.startswith("synth-") or "synthscenes" in card.tags:
            found.append(path)
    return found


def train_all(cards: list[str], seeds: list[int], root: Path, data_dir: Path, index: Path, after=None) -> dict[str, Path]:
    """Train (or reuse) every (card, seed), seed-major so that both seeds of the first cards come first; `after(key,
    folder)` runs after each one (scoring it at once, so that results arrive while the rest trains)."""
    folders: dict[str, Path] = {}
    order = [(c, s) for s in seeds for c in cards[:2]] + [(c, s) for s in seeds for c in cards[2:]]
    for name, seed in order:
        card = load_checkpoint_card(name).with_overrides(train={"seed": seed})
        start = time.perf_counter()
        folder = ensure_checkpoint(card, root=root, data_dir=data_dir)
        folders[f"{name}/{seed}"] = folder
        # Re-read before writing: two bench processes may train disjoint --cards at the same time.
        done = json.loads(index.read_text()) if index.is_file() else {}
        done[f"{name}/{seed}"] = str(folder.resolve())
        write_json_atomic(index, dict(sorted(done.items())))
        print(f"trained {name} seed {seed} in {time.perf_counter() - start:.0f}s: {folder}", flush=True)
        if after is not None:
            after(f"{name}/{seed}", folder)
    return folders


def score_all(folders: dict[str, Path], tasks: list[Path], results: Path, data_dir: Path) -> None:
    for key, folder in folders.items():
        for task in tasks:
            start = time.perf_counter()
            evaluation = run_evaluation(str(folder), task, out=results, data_dir=data_dir)
            shown = ", ".join(
                f"{k} {'n/a' if m.value is None else f'{m.value:.4g}'}" for k, m in evaluation.record.metrics.items()
            )
            reused = " (reused)" if evaluation.reused else f" ({time.perf_counter() - start:.0f}s)"
            print(f"{key} {task.stem}{reused}: {shown}", flush=True)


def det_with_trained_backbone(folders: dict[str, Path], out: Path, data_dir: Path) -> None:
    card = write_card_variant(
        find_card("synth-det"),
        out / "tasks" / "synth-det.yaml",
        "synth-det with the backbone fine-tuned end to end with the heads (bench/like_for_like.py, det stage).",
        params={"train_backbone": True},
    )
    for name in DET_BACKBONE_CARDS:
        evaluation = run_evaluation(str(folders[f"{name}/0"]), card, out=out / "results-det-backbone", data_dir=data_dir)
        shown = ", ".join(f"{k} {'n/a' if m.value is None else f'{m.value:.4g}'}" for k, m in evaluation.record.metrics.items())
        print(f"{name} seed 0 synth-det, backbone trained: {shown}", flush=True)


def bidirectional_text(folders: dict[str, Path], seeds: list[int], out: Path, root: Path, data_dir: Path) -> None:
    for seed in seeds:
        card = load_checkpoint_card("tiny-sparc").with_overrides(train={"seed": seed, "text_attention": "bidirectional"})
        models = {"bidirectional": ensure_checkpoint(card, root=root, data_dir=data_dir), "causal": folders[f"tiny-sparc/{seed}"]}
        for attention, folder in models.items():
            for task in BIDIR_TASKS:
                record = run_evaluation(str(folder), task, out=out / "results-bidirectional", data_dir=data_dir).record
                shown = ", ".join(f"{k} {'n/a' if m.value is None else f'{m.value:.4g}'}" for k, m in record.metrics.items())
                print(f"tiny-sparc {attention} seed {seed} {task}: {shown}", flush=True)


def training_costs(folders: dict[str, Path]) -> dict[str, list[str]]:
    """Per recipe, each seed's training time with the intra-op threads it ran on (both from its config.json)."""
    costs: dict[str, list[str]] = {}
    for key, folder in sorted(folders.items()):
        config = json.loads((folder / "config.json").read_text())
        threads = config["provenance"]["numerics"]["intra_op_threads"]
        name, seed = key.split("/")
        costs.setdefault(name, []).append(f"seed {seed} {config['training']['train_seconds']:.0f}s on {threads} thread(s)")
    return costs


# synth-det is left out of the paired tests: its AP needs a COCOeval run per resample and seed (hours on 2 cores).
PAIRED_TASKS = ("synth-cls", "synth-retrieval", "synth-seg", "synth-kprecision", "synth-grounding")


# The README's compact table: one or two headline metrics per task (the page has them all).
HEADLINE = (
    ("synth-cls", "top1", "cls top-1"),
    ("synth-retrieval", "i2t_r1", "i→t R@1"),
    ("synth-retrieval", "t2i_r1", "t→i R@1"),
    ("synth-seg", "mIoU", "seg mIoU"),
    ("synth-det", "AP", "det AP"),
    ("synth-kprecision", "kp", "K-P"),
    ("synth-grounding", "pointing_acc", "pointing"),
    ("synth-grounding", "fine_loss_ratio", "fine loss mismatched / matched"),
    ("synth-binding", "acc_mean", "binding acc"),
)


def headline_markdown(results: Path) -> str:
    """Rows: the six recipes; columns: HEADLINE metrics as mean ± sd over seeds (the README's table)."""
    from sparc_eval.results.table import build_table, cell_text

    table = build_table(results, layout="paper")
    columns = {(c.task, c.metric): c for c in table.columns}
    shown = [(key, title) for *key, title in HEADLINE if tuple(key) in columns]
    lines = ["| objective | " + " | ".join(title for _, title in shown) + " |", "|:---|" + "---:|" * len(shown)]
    for label in table.rows:
        cells = [cell_text(table, label, columns[tuple(key)]) for key, _ in shown]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def publish(results: Path, publish_dir: Path, folders: dict[str, Path]) -> None:
    from sparc_eval.results.leaderboard import PairedSpec, build_leaderboard
    from sparc_eval.results.table import build_table, render_csv

    title = "Like-for-like comparison on SynthScenes: six objectives, same towers, data and budget"
    # Every objective against CLIP; 200 resamples where the aggregate is recomputed per resample (mIoU, K-P).
    paired = PairedSpec("tiny-clip", tasks=PAIRED_TASKS, n_bootstrap=1000, n_bootstrap_aggregate=200)
    for path in build_leaderboard(results, publish_dir, title=title, per_seed=False, paired=paired).values():
        print(f"wrote {path}", flush=True)
    per_seed = publish_dir / "leaderboard-per-seed.csv"
    per_seed.write_text(render_csv(build_table(results, layout="paper", per_seed=True)), encoding="utf-8")
    print(f"wrote {per_seed}", flush=True)
    print(headline_markdown(results), flush=True)
    for name, costs in training_costs(folders).items():
        print(f"{name}: training {', '.join(costs)} (a shared machine: compare within one run)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cards", nargs="+", default=list(CARDS), metavar="CARD")
    parser.add_argument("--stages", nargs="+", default=["train", "score", "det", "publish"], choices=STAGES)
    parser.add_argument("--out", type=Path, default=Path("runs/like-for-like"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--publish-dir", type=Path, default=Path("leaderboard/like-for-like"))
    args = parser.parse_args()

    index = args.out / "CHECKPOINTS.json"
    results = args.out / "results"
    if "train" in args.stages:

        def score_now(key: str, folder: Path) -> None:
            if "score" in args.stages:
                score_all({key: folder}, synth_task_cards(), results, args.data_dir)

        folders = train_all(args.cards, args.seeds, args.out / "checkpoints", args.data_dir, index, after=score_now)
    else:
        folders = {key: Path(folder) for key, folder in json.loads(index.read_text()).items()}
        if "score" in args.stages:
            score_all(folders, synth_task_cards(), results, args.data_dir)
    if "det" in args.stages:
        det_with_trained_backbone(folders, args.out, args.data_dir)
    if "bidir" in args.stages:
        bidirectional_text(folders, args.seeds, args.out, args.out / "checkpoints", args.data_dir)
    if "publish" in args.stages:
        publish(results, args.publish_dir, folders)


if __name__ == "__main__":
    main()

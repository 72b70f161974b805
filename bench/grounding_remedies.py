"""Does anything remove SPARC's position shortcut? Grounding diagnostics over training variants and seeds.

Every variant is the quickstart recipe (checkpoints/tiny-clip.yaml or tiny-sparc.yaml: same SynthScenes
tree, steps, batch and learning rate) with one change and a seed; checkpoints are trained through the
checkpoint-card path, so the seed-0 cards themselves are reused from a quickstart run given the same
--ckpt-root. Each model is scored by the synth-grounding card (local head, the path SPARC's fine loss
aligns), by a copy of it with `head: global`, and by synth-retrieval and synth-cls (what a remedy costs the
global alignment). Prints one Markdown table row per (variant, seed, head)
and writes every metric to OUT/grounding_remedies.json.

Example: python bench/grounding_remedies.py --seeds 0 1 --ckpt-root runs/quickstart/checkpoints --out runs/remedies
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sparc_eval.checkpoint_cards import ensure_checkpoint, load_checkpoint_card
from sparc_eval.evaluation import run_evaluation
from sparc_eval.fileio import write_json_atomic
from sparc_eval.tasks.card import find_card, write_card_variant

# name -> (checkpoint card, objective options replacing the card's)
VARIANTS: dict[str, tuple[str, dict | None]] = {
    "clip": ("tiny-clip", None),
    "sparc (card: lambda_f 5)": ("tiny-sparc", None),
    "sparc lambda_f 1": ("tiny-sparc", {"lambda_g": 0.5, "lambda_f": 1.0}),
    "sparc softmax weights": ("tiny-sparc", {"lambda_g": 0.5, "lambda_f": 5.0, "sparsity": False, "weights": "softmax"}),
    "sparc no sparsity": ("tiny-sparc", {"lambda_g": 0.5, "lambda_f": 5.0, "sparsity": False}),
    "sparc unique tokens": ("tiny-sparc", {"lambda_g": 0.5, "lambda_f": 5.0, "fine_tokens": "unique"}),
    "sparc + image negatives": ("tiny-sparc", {"lambda_g": 0.5, "lambda_f": 5.0, "lambda_images": 1.0}),
}
COLUMNS = (
    "pointing_acc",
    "pointing_chance",
    "mass_in_object",
    "nnz_patches",
    "fine_loss_matched",
    "fine_loss_mismatched",
    "fine_loss_ratio",
    "position_r2",
)
# What a remedy costs the global alignment: scored once per model, shown on both of its rows.
GLOBAL_TASKS = {"synth-retrieval": ("i2t_r1", "t2i_r1"), "synth-cls": ("top1",)}


def head_cards(out: Path) -> dict[str, Path]:
    """The synth-grounding card as shipped (local head) and a copy scoring the global head."""
    shipped = find_card("synth-grounding")
    copy = write_card_variant(
        shipped,
        out / "tasks" / "synth-grounding-global.yaml",
        "synth-grounding with the global dense head (bench/grounding_remedies.py).",
        params={"head": "global"},
    )
    return {"local": shipped, "global": copy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    parser.add_argument("--ckpt-root", type=Path, default=Path("runs/remedies/checkpoints"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("runs/remedies"))
    args = parser.parse_args()

    cards = head_cards(args.out)
    rows = []
    global_columns = [m for metrics in GLOBAL_TASKS.values() for m in metrics]
    print("| variant | seed | head | " + " | ".join(COLUMNS + tuple(global_columns)) + " |")
    print("|---|---|---|" + "---|" * (len(COLUMNS) + len(global_columns)), flush=True)
    for variant in args.variants:
        card_name, options = VARIANTS[variant]
        for seed in args.seeds:
            overrides = {"seed": seed, **({"objective_options": options} if options is not None else {})}
            card = load_checkpoint_card(card_name).with_overrides(train=overrides)
            ckpt = ensure_checkpoint(card, root=args.ckpt_root, data_dir=args.data_dir)
            global_values = {}
            for task, metrics in GLOBAL_TASKS.items():
                record = run_evaluation(str(ckpt), task, out=args.out / "results", data_dir=args.data_dir).record
                global_values.update({k: record.metrics[k].value for k in metrics})
            for head, task in cards.items():
                record = run_evaluation(str(ckpt), task, out=args.out / "results", data_dir=args.data_dir).record
                values = {**{k: record.metrics[k].value for k in COLUMNS}, **global_values}
                rows.append({"variant": variant, "seed": seed, "head": head, "checkpoint": str(ckpt), **values})
                shown = " | ".join("n/a" if v is None else f"{v:.3f}" for v in values.values())
                print(f"| {variant} | {seed} | {head} | {shown} |", flush=True)
    write_json_atomic(args.out / "grounding_remedies.json", rows)


if __name__ == "__main__":
    main()

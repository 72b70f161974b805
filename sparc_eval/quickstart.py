"""`sparc-eval quickstart`: the main job, end to end on a CPU.

Generates SynthScenes, trains tiny-clip and tiny-sparc from their checkpoint cards (same data, steps
and seed; reused when already trained), scores both on every task card tagged `quickstart`, prints the
comparison table and builds the leaderboard. `fast=True` is a seconds-long smoke run of the same
path: a tiny SynthScenes tree for training and for every task, a few training steps, and a sample
limit; its numbers mean nothing and its task cards (written beside the results) say so by their hash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sparc_eval.checkpoint_cards import ensure_checkpoint, load_checkpoint_card
from sparc_eval.errors import SparcEvalError
from sparc_eval.evaluation import DEFAULT_DATA_DIR, run_evaluation
from sparc_eval.results.leaderboard import build_leaderboard
from sparc_eval.results.table import build_table, render_rich
from sparc_eval.tasks.card import list_card_paths, load_card, write_card_variant

CHECKPOINT_CARDS = ("tiny-clip", "tiny-sparc")
TASK_TAG = "quickstart"  # the task cards the quickstart scores carry this tag (docs/cards.md)


@dataclass(frozen=True)
class Profile:
    """What a quickstart run changes relative to the cards: nothing for the real run."""

    synthscenes: dict[str, int] | None = None  # one tree for training and every task; None = the cards' own
    train: dict[str, Any] = field(default_factory=dict)  # checkpoint-card trainer overrides
    task_params: dict[str, Any] = field(default_factory=dict)  # task-card params overrides, where the card has the key
    limit: int | None = None


FULL = Profile()
FAST = Profile(
    synthscenes={"seed": 0, "n_train": 32, "n_val": 8, "image_size": 64},
    train={"steps": 2, "batch_size": 8, "warmup": 1, "log_every": 1},
    task_params={"epochs": 1},  # fitting stages (detection heads, captioner) run one epoch
    limit=4,
)


@dataclass
class QuickstartResult:
    out: Path
    results_dir: Path
    leaderboard: dict[str, Path]
    checkpoints: dict[str, Path]
    seconds: dict[str, float]  # per stage


def quickstart_task_cards(out: Path, profile: Profile) -> list[Path]:
    """The task cards tagged `quickstart`: as shipped, or (fast profile) copies on the profile's SynthScenes tree
    and params."""
    paths = [p for p in list_card_paths() if TASK_TAG in load_card(p).tags]
    if not paths:
        raise SparcEvalError(f"no task card carries the tag {TASK_TAG!r}; see `sparc-eval tasks --tag {TASK_TAG}`")
    if profile.synthscenes is None and not profile.task_params:
        return paths
    note = "on quickstart --fast's tiny SynthScenes tree (smoke run only)."
    variants = []
    for path in paths:
        written = load_card(path).params  # the profile overrides only what a card sets (epochs of a fitting stage)
        params = {k: v for k, v in profile.task_params.items() if k in written}
        variants.append(
            write_card_variant(
                path, out / "tasks" / path.name, f"{path.name} {note}", params=params, synthscenes=profile.synthscenes
            )
        )
    return variants


def run_quickstart(
    out: str | Path, *, fast: bool = False, data_dir: str | Path = DEFAULT_DATA_DIR, console: Console | None = None
) -> QuickstartResult:
    console = console or Console()
    profile = FAST if fast else FULL
    out, data_dir = Path(out), Path(data_dir)
    results_dir = out / "results"
    seconds: dict[str, float] = {}

    cards = [load_checkpoint_card(name) for name in CHECKPOINT_CARDS]
    if profile.synthscenes is not None or profile.train:
        cards = [c.with_overrides(synthscenes=profile.synthscenes, train=profile.train) for c in cards]
    checkpoints: dict[str, Path] = {}
    for card in cards:
        start = time.perf_counter()
        console.rule(f"checkpoint {card.name}: {card.train['objective']}, {card.train['steps']} steps")
        checkpoints[card.name] = ensure_checkpoint(card, root=out / "checkpoints", data_dir=data_dir)
        seconds[f"train {card.name}"] = time.perf_counter() - start
        console.print(f"{card.name}: {checkpoints[card.name]}", highlight=False)

    tasks = quickstart_task_cards(out, profile)
    for task in tasks:
        card = load_card(task)
        start = time.perf_counter()
        console.rule(f"task {card.name}")
        for name, folder in checkpoints.items():
            evaluation = run_evaluation(str(folder), task, out=results_dir, data_dir=data_dir, limit=profile.limit)
            shown = ", ".join(
                f"{k} {'n/a' if m.value is None else f'{m.value:.4g}'}" for k, m in evaluation.record.metrics.items()
            )
            console.print(f"{name}: {shown}{' (reused)' if evaluation.reused else ''}", highlight=False)
        seconds[f"task {card.name}"] = time.perf_counter() - start

    start = time.perf_counter()
    console.print(
        render_rich(
            build_table(results_dir, layout="paper"),
            title="tiny-clip vs tiny-sparc on SynthScenes" + (" (--fast: smoke run, numbers meaningless)" if fast else ""),
            width=console.width,
        )
    )
    leaderboard = build_leaderboard(results_dir, out / "leaderboard")
    seconds["table + leaderboard"] = time.perf_counter() - start
    return QuickstartResult(out, results_dir, leaderboard, checkpoints, seconds)

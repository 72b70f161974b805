"""`sparc-eval tasks` and `sparc-eval run`: list task cards, score checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import app, console
from sparc_eval.cli.cards import cards_option, use_cards


@app.command("tasks")
def tasks_list(
    tag: list[str] = typer.Option([], "--tag", help="Only cards carrying this tag; repeat to require several."),
    cards: list[Path] = cards_option(),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the task cards with their runner, dataset, metrics and tags.

    Example: sparc-eval tasks --tag quickstart
    """
    import json

    from rich.markup import escape
    from rich.table import Table

    from sparc_eval.tasks.card import list_card_paths, load_card
    from sparc_eval.tasks.runner import get_runner

    use_cards(cards)
    rows = []
    for path in list_card_paths():
        card = load_card(path)
        if not set(tag) <= set(card.tags):
            continue
        runner = get_runner(card.runner, card.path)
        rows.append(
            {
                "name": card.name,
                "version": card.version,
                "runner": card.runner,
                "dataset": f"{card.dataset.format}:{card.dataset.root} [{card.dataset.split}]",
                "metrics": list(runner.card_metrics(card)),
                "tags": list(card.tags),
                "path": str(card.path),
            }
        )
    if json_out:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="task cards" + (f" tagged {', '.join(tag)}" if tag else ""))
    for column in ("name", "version", "runner", "dataset", "metrics", "tags"):
        table.add_column(column)
    for row in rows:
        lists = (", ".join(row["metrics"]), ", ".join(row["tags"]))
        table.add_row(*map(escape, (row["name"], str(row["version"]), row["runner"], row["dataset"], *lists)))
    console.print(table)


@app.command("run")
def run(
    task: list[str] = typer.Option(..., "--task", "-t", help="Task card name or path; repeat for several."),
    ckpt: str = typer.Option(
        ...,
        "--ckpt",
        help="Checkpoint: a sparc-eval checkpoint folder, a checkpoint card (card:NAME or a .yaml path), openclip:ARCH[@FILE|@TAG], openclip:local-dir:PATH, openclip:hf-hub:ORG/NAME, hf:PATH (transformers CLIP/SigLIP; README 'Model sources').",
    ),
    cards: list[Path] = cards_option(),
    out: Path = typer.Option(Path("results"), "--out", help="Results folder."),
    data_dir: Path = typer.Option(
        Path("data"),
        "--data-dir",
        envvar="SPARC_EVAL_DATA",
        help="Where datasets live; SynthScenes is generated here on first use.",
    ),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N samples."),
    batch_size: int = typer.Option(64, "--batch-size", help="Batch size."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (autocast)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    num_workers: int | None = typer.Option(
        None,
        "--num-workers",
        help="DataLoader worker processes per rank (default: half the CPUs per rank, at most 8; env SPARC_EVAL_NUM_WORKERS).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for everything random in the run."),
    force: bool = typer.Option(False, "--force", help="Recompute even if a record exists."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow checkpoint files that need code to unpickle."),
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        help="Recompute image and text embeddings instead of reusing the feature cache (env SPARC_EVAL_CACHE: its folder).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the records as JSON on stdout."),
) -> None:
    """Score a checkpoint on one or more task cards; writes one result record per task.

    Example: sparc-eval run --task synth-cls --task synth-retrieval --ckpt runs/quick/tiny-sparc

    Under torchrun every process scores its slice of each split and rank 0 writes the records
    (docs/scale.md), e.g. torchrun --nproc-per-node 4 -m sparc_eval run --task coco-retrieval --ckpt CKPT --device cuda
    """
    import json

    from rich.table import Table

    from sparc_eval.cli import checks
    from sparc_eval.evaluation import run_evaluation
    from sparc_eval.results.record import direction_arrow
    from sparc_eval.tasks.card import load_card
    from sparc_eval.tasks.distributed import current_world, world_from_env

    # Under torchrun, join the process group first: a check below that fails is then one line, whichever ranks fail it.
    world_from_env("cuda" if device.startswith("cuda") else "cpu")
    use_cards(cards)
    checks.output_folder("--out", out, free_mib=16)
    checks.data_folder("--data-dir", data_dir)
    checks.at_least("--limit", limit, 1)
    checks.at_least("--batch-size", batch_size, 1)
    checks.workers("--num-workers", num_workers)
    checks.seed("--seed", seed)
    checks.one_of("--precision", precision, ("fp32", "bf16"))
    for name in task:  # every card is read and validated before the first one runs
        load_card(name)
    evaluations = [
        run_evaluation(
            ckpt,
            name,
            out=out,
            data_dir=data_dir,
            limit=limit,
            batch_size=batch_size,
            precision=precision,
            device=device,
            num_workers=num_workers,
            seed=seed,
            force=force,
            trust_pickle=trust_pickle,
            cache=not no_cache,
        )
        for name in task
    ]
    if not current_world().is_main:  # under torchrun rank 0 alone reports
        return
    if json_out:
        print(json.dumps([e.record.to_json() for e in evaluations], indent=2))
        return
    table = Table(title=f"results for {ckpt}")
    for column in ("task", "metric", "value", "n", "status", "record"):
        table.add_column(column)
    for e in evaluations:
        status = "reused" if e.reused else f"{e.record.wall_time_s:.1f}s"
        for i, (name, metric) in enumerate(e.record.metrics.items()):
            value = "n/a" if metric.value is None else f"{metric.value:.4g}"
            arrow = direction_arrow(metric.higher_is_better)
            first = i == 0
            table.add_row(
                e.record.task["name"] if first else "",
                f"{name} {arrow}",
                value,
                str(e.record.n_samples) if first else "",
                status if first else "",
                str(e.path) if first else "",
            )
    console.print(table)

"""The `sparc-eval` command line: one typer app, one sub-app per command group.

Heavy imports (torch, open_clip) happen inside commands so that `--help` stays instant.
Every user-caused error is a SparcEvalError: printed on one line, exit code 2, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from sparc_eval import __version__
from sparc_eval.errors import SparcEvalError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="sparc-eval",
    help="Train SPARC / CLIP-style image-text models and score them on the SPARC paper's tasks.\n\n"
    "Example: sparc-eval quickstart --out runs/quick",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(
    help="Generate and verify datasets.\n\nExample: sparc-eval data synth --out data/synthscenes", no_args_is_help=True
)
app.add_typer(data_app, name="data")


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"sparc-eval {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train SPARC / CLIP-style image-text models and score them on the SPARC paper's tasks."""


# ---------------------------------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the SynthScenes tree into."),
    seed: int = typer.Option(0, help="Generator seed; the same seed gives byte-identical files."),
    n_train: int = typer.Option(4000, "--n-train", help="Training images."),
    n_val: int = typer.Option(500, "--n-val", help="Validation images (the test split has as many)."),
    image_size: int = typer.Option(64, "--image-size", help="Image side in pixels."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per CPU core)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and is not empty."),
) -> None:
    """Generate SynthScenes in the real formats (COCO, Karpathy, VOCdevkit, ImageFolder, pairs).

    Example: sparc-eval data synth --out data/synthscenes --seed 0 --n-train 4000 --n-val 500
    """
    from sparc_eval.data.synth import generate_synthscenes

    summary = generate_synthscenes(
        out, seed=seed, n_train=n_train, n_val=n_val, image_size=image_size, workers=workers, force=force
    )
    console.print(summary)


@data_app.command("check")
def data_check(root: Path = typer.Argument(..., help="Dataset folder holding a MANIFEST.json.")) -> None:
    """Verify a dataset tree against its manifest: files present, md5, images decode, annotations resolve.

    Example: sparc-eval data check data/synthscenes
    """
    from sparc_eval.data.manifest import check_tree

    report = check_tree(root)
    console.print(report.table())
    if not report.ok:
        raise SparcEvalError(f"{root}: {report.first_problem}")


@data_app.command("inspect")
def data_inspect(
    format: str = typer.Argument(
        ..., help="Reader format: coco-captions, coco-instances, karpathy, lvis, voc, imagefolder, pairs."
    ),
    root: Path = typer.Argument(
        ..., help="Dataset root as the format defines it (images folder, VOCdevkit/<name>, pairs file...)."
    ),
    split: str = typer.Option("val", help="Split to open."),
    option: list[str] = typer.Option([], "--option", "-o", help="Reader option KEY=VALUE (repeatable; VALUE is read as YAML)."),
    limit: int = typer.Option(0, help="Read only the first N items (0 = all of them)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
) -> None:
    """Open a dataset with its reader and read every item, so layout problems show before a long run.

    Example: sparc-eval data inspect coco-instances data/synthscenes/images --split val -o annotation=../coco/annotations/instances_{split}.json
    """
    import json

    import yaml
    from rich.table import Table

    from sparc_eval.data.registry import open_dataset
    from sparc_eval.progress import track

    options = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SparcEvalError(f"reader option {item!r} is not KEY=VALUE")
        options[key] = yaml.safe_load(value) if value else ""
    ds = open_dataset(format, root, split, **options)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    first = None
    for i in track(range(n), f"reading {format}"):
        item = ds[i]
        first = first or item
    summary = {"format": format, "root": str(root), "split": split, "items": len(ds), "items_read": n}
    for attr in ("classnames", "categories", "captions_per_image"):
        if hasattr(ds, attr):
            value = getattr(ds, attr)
            summary[attr] = len(value) if isinstance(value, list) else value
    summary["item"] = {
        k: (f"{type(v).__name__}{list(v.shape)}" if hasattr(v, "shape") else type(v).__name__) for k, v in (first or {}).items()
    }
    if json_out:
        print(json.dumps(summary))
        return
    table = Table(title=f"{format}: {root} ({split})")
    table.add_column("key")
    table.add_column("value")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


# ---------------------------------------------------------------------------------------- train


@app.command("train")
def train_cmd(
    data: Path = typer.Option(
        ...,
        "--data",
        help="Training pairs: a .jsonl/.csv file (columns image, caption), a folder with train.jsonl, or a SynthScenes root.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Checkpoint folder to write (must not exist); periodic checkpoints go to OUT.periodic/ until the run ends.",
    ),
    arch: str = typer.Option("tiny", "--arch", help="Model preset (tiny, vit-b-16) or an open_clip ViT architecture name."),
    objective: str = typer.Option("sparc", "--objective", help="sparc (global + fine-grained) or clip (global only)."),
    no_sparsity: bool = typer.Option(
        False, "--no-sparsity", help="SPARC ablation: keep every min-max normalised similarity (no 1/P threshold)."
    ),
    softmax_weights: bool = typer.Option(
        False, "--softmax-weights", help="SPARC ablation: alignment weights = softmax over patches of the raw similarities."
    ),
    lambda_f: float | None = typer.Option(
        None, "--lambda-f", help="SPARC fine-grained loss weight (default 1.0; the paper sweeps 0.5, 1, 5, 10)."
    ),
    lambda_g: float | None = typer.Option(None, "--lambda-g", help="SPARC global loss weight (default 0.5, as in the paper)."),
    lambda_images: float | None = typer.Option(
        None,
        "--lambda-images",
        help="Weight of an extra loss asking each token's grouped patches to come from its own image rather than 7 others (default 0: off, as in the paper; see docs/grounding.md).",
    ),
    fine_tokens: str = typer.Option(
        "all",
        "--fine-tokens",
        help="Tokens in the fine-grained loss: all (the paper) or unique (only words that occur once in their caption; see docs/grounding.md).",
    ),
    steps: int = typer.Option(1000, "--steps", help="Optimisation steps."),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch size (split evenly over torchrun processes)."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW)."),
    warmup: int = typer.Option(50, "--warmup", help="Linear warm-up steps before the cosine decay."),
    weight_decay: float = typer.Option(
        0.1, "--weight-decay", help="AdamW weight decay (not applied to biases, norms, temperature)."
    ),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Clip the gradient norm to this (0 = off)."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the initialisation and of the batch draws; same seed, same losses on CPU."
    ),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast for the towers (losses stay fp32)."),
    save_every: int = typer.Option(0, "--save-every", help="Write a periodic checkpoint every K steps (0 = off)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last periodic checkpoint in OUT.periodic/ (starts afresh if there is none)."
    ),
    log_every: int = typer.Option(
        10, "--log-every", help="Log losses, and fine loss on matched vs mismatched pairs, every N steps."
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK if available, else cpu)."
    ),
) -> None:
    """Train a SPARC (or CLIP) model on image-text pairs; writes model.safetensors, config.json, train_log.jsonl and loss_curve.png.

    Runs unchanged under torchrun (DDP: gloo on CPU, nccl on GPU).

    Example: sparc-eval train --data data/synthscenes --arch tiny --objective sparc --steps 300 --batch-size 64 --out runs/tiny-sparc
    """
    import time

    from sparc_eval.train.loop import LOG_FILE, TrainConfig, train

    sparc_only = {
        "--no-sparsity": no_sparsity,
        "--softmax-weights": softmax_weights,
        "--lambda-f": lambda_f is not None,
        "--lambda-g": lambda_g is not None,
        "--lambda-images": lambda_images is not None,
        "--fine-tokens": fine_tokens != "all",
    }
    options: dict = {}
    if objective == "sparc":
        options = {"sparsity": not (no_sparsity or softmax_weights), "weights": "softmax" if softmax_weights else "sparse"}
        named = {
            "lambda_f": lambda_f,
            "lambda_g": lambda_g,
            "lambda_images": lambda_images,
            "fine_tokens": None if fine_tokens == "all" else fine_tokens,
        }
        options.update({k: v for k, v in named.items() if v is not None})
    elif any(sparc_only.values()):
        raise SparcEvalError(
            f"{next(k for k, v in sparc_only.items() if v)} applies only to --objective sparc, not {objective!r}"
        )
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        arch=arch,
        objective=objective,
        objective_options=options,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        seed=seed,
        bf16=bf16,
        save_every=save_every,
        log_every=log_every,
        resume=resume,
        device=device,
    )
    started = time.perf_counter()
    path = train(cfg)
    if path is not None:  # only rank 0 writes the checkpoint
        import json

        last = json.loads((path / LOG_FILE).read_text(encoding="utf-8").splitlines()[-1])
        parts = ", ".join(
            f"{k} {last[k]:.4f}" for k in ("loss", "global", "fine", "fine_matched", "fine_mismatched") if k in last
        )
        console.print(f"wrote {path} in {time.perf_counter() - started:.0f}s; step {last['step']}: {parts}", highlight=False)


# ---------------------------------------------------------------------------------------- tasks / run


@app.command("tasks")
def tasks_list(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the task cards with their runner, dataset and metrics.

    Example: sparc-eval tasks
    """
    import json

    from rich.table import Table

    from sparc_eval.tasks.card import list_card_paths, load_card
    from sparc_eval.tasks.runner import get_runner

    rows = []
    for path in list_card_paths():
        card = load_card(path)
        runner = get_runner(card.runner, card.path)
        rows.append(
            {
                "name": card.name,
                "version": card.version,
                "runner": card.runner,
                "dataset": f"{card.dataset.format}:{card.dataset.root} [{card.dataset.split}]",
                "metrics": list(runner.metrics),
                "path": str(card.path),
            }
        )
    if json_out:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="task cards")
    for column in ("name", "version", "runner", "dataset", "metrics"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["version"]), row["runner"], row["dataset"], ", ".join(row["metrics"]))
    console.print(table)


@app.command("run")
def run(
    task: list[str] = typer.Option(..., "--task", "-t", help="Task card name or path; repeat for several."),
    ckpt: str = typer.Option(
        ...,
        "--ckpt",
        help="Checkpoint: a sparc-eval checkpoint folder, a checkpoint card (.yaml), openclip:ARCH, openclip:ARCH@FILE.",
    ),
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
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed for everything random in the run."),
    force: bool = typer.Option(False, "--force", help="Recompute even if a record exists."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow checkpoint files that need code to unpickle."),
    json_out: bool = typer.Option(False, "--json", help="Print the records as JSON on stdout."),
) -> None:
    """Score a checkpoint on one or more task cards; writes one result record per task.

    Example: sparc-eval run --task synth-cls --task synth-retrieval --ckpt runs/quick/tiny-sparc
    """
    import json

    from rich.table import Table

    from sparc_eval.evaluate import run_evaluation
    from sparc_eval.results.record import direction_arrow

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
        )
        for name in task
    ]
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


# ---------------------------------------------------------------------------------------- table / regress / leaderboard


@app.command("table")
def table_cmd(
    results_dir: Path = typer.Argument(..., help="Results folder (searched recursively for *.record.json)."),
    fmt: str = typer.Option("rich", "--format", "-f", help="rich, md, csv or json."),
    layout: str = typer.Option("default", "--layout", help="default (tasks by name) or paper (the SPARC paper's column order)."),
) -> None:
    """Pivot result records into one table: a row per checkpoint, a column per task x metric.

    Example: sparc-eval table results --format md --layout paper
    """
    from sparc_eval.results.table import FORMATS, TEXT_RENDERERS, build_table, render_rich

    if fmt not in FORMATS:
        raise SparcEvalError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    table = build_table(results_dir, layout=layout)
    if fmt == "rich":
        console.print(render_rich(table, title=f"results in {results_dir}", width=console.width))
    else:
        sys.stdout.write(TEXT_RENDERERS[fmt](table))


@app.command("regress")
def regress_cmd(
    baseline: Path = typer.Option(..., "--baseline", help="Folder of baseline result records (e.g. leaderboard/baseline)."),
    results: Path = typer.Option(..., "--results", help="Folder of new result records to gate."),
    tolerance: float = typer.Option(0.0, "--tolerance", help="Absolute drop allowed before a metric is tested at all."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the paired test."),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", help="Paired bootstrap resamples (metrics without 0/1 per-sample outcomes)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    exact: bool = typer.Option(
        False,
        "--exact",
        help="Both folders replicate one deterministic run (CI's quickstart --fast): any drop beyond the tolerance fails, no paired test.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Regression gate: fail when a metric drops beyond the tolerance AND significantly, or a baseline task is missing or changed.

    Exit code 0 = pass, 1 = regression / missing / changed, 2 = bad input.

    Example: sparc-eval regress --baseline leaderboard/baseline --results runs/ci/results --tolerance 0.01
    """
    import json

    from sparc_eval.results.regress import compare_results, render_report

    report = compare_results(baseline, results, tolerance=tolerance, alpha=alpha, n_bootstrap=bootstrap, seed=seed, exact=exact)
    if json_out:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render_report(report, console)
    sys.exit(report.exit_code)  # typer.Exit would be swallowed by standalone_mode=False


leaderboard_app = typer.Typer(
    help="Publish result tables.\n\nExample: sparc-eval leaderboard build results --out leaderboard/", no_args_is_help=True
)
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("build")
def leaderboard_build(
    results_dir: Path = typer.Argument(..., help="Results folder (searched recursively for *.record.json)."),
    out: Path = typer.Option(Path("leaderboard"), "--out", help="Folder for leaderboard.md, leaderboard.csv and index.html."),
    title: str = typer.Option("sparc-eval leaderboard", "--title", help="Page title."),
) -> None:
    """Write the leaderboard as Markdown, CSV and a self-contained, sortable HTML page with one chart per task family.

    Example: sparc-eval leaderboard build results --out leaderboard/
    """
    from sparc_eval.results.leaderboard import build_leaderboard

    for path in build_leaderboard(results_dir, out, title=title).values():
        console.print(f"wrote {path}", highlight=False)


# ---------------------------------------------------------------------------------------- quickstart


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Folder for checkpoints, results and the leaderboard."),
    fast: bool = typer.Option(
        False, "--fast", help="Seconds-long smoke run: tiny data, a few steps, --limit; numbers meaningless."
    ),
    data_dir: Path = typer.Option(
        Path("data"), "--data-dir", envvar="SPARC_EVAL_DATA", help="Where SynthScenes is generated (reused when present)."
    ),
) -> None:
    """The main job: generate SynthScenes, train tiny-clip and tiny-sparc (same data, steps, seed), score both on
    every synth-* task, print the comparison table and build the leaderboard. Under 10 minutes on 2 CPU cores.

    Example: sparc-eval quickstart --out runs/quick
    """
    from sparc_eval.quickstart import run_quickstart

    result = run_quickstart(out, fast=fast, data_dir=data_dir, console=console)
    for stage, seconds in result.seconds.items():
        console.print(f"{stage}: {seconds:.1f} s", highlight=False)
    console.print(f"results: {result.results_dir}\nleaderboard: {result.leaderboard['index.html']}", highlight=False)


# ---------------------------------------------------------------------------------------- viz

viz_app = typer.Typer(
    help="Pictures: token-to-patch alignment heat maps and segmentation panels.\n\n"
    "Example: sparc-eval viz align --ckpt runs/quick/tiny-sparc --image data/synthscenes/images/004001.png "
    "--caption 'a small red circle' --out align.png",
    no_args_is_help=True,
)
app.add_typer(viz_app, name="viz")


@viz_app.command("align")
def viz_align(
    ckpt: str = typer.Option(
        ..., "--ckpt", help="Checkpoint: a sparc-eval checkpoint folder, openclip:ARCH or openclip:ARCH@FILE."
    ),
    image: Path = typer.Option(..., "--image", help="Image file; inside a SynthScenes tree the described objects are outlined."),
    caption: str = typer.Option(..., "--caption", help="Caption whose tokens are shown, one panel each."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    head: str = typer.Option("local", "--head", help="Dense head: local (the path SPARC's fine-grained loss aligns) or global."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow checkpoint files that need code to unpickle."),
    json_out: bool = typer.Option(False, "--json", help="Print the per-token summary as JSON on stdout."),
) -> None:
    """Heat map of each caption token's alignment weights over the image patches (SPARC paper, Fig. 1).

    SPARC checkpoints show SPARC's own sparse alignment weights; other models a softmax over patch
    similarities, and the title says which.

    Example: sparc-eval viz align --ckpt runs/quick/tiny-sparc --image data/synthscenes/images/004001.png --caption 'a small red circle' --out align.png
    """
    import json

    from sparc_eval.viz.align import render_alignment

    summary = render_alignment(ckpt, image, caption, out, head=head, device=device, trust_pickle=trust_pickle)
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        console.print(f"wrote {out} ({summary['method']}; ground truth: {summary['ground_truth'] or 'none'})", highlight=False)


@viz_app.command("seg")
def viz_seg(
    ckpt: str = typer.Option(
        ..., "--ckpt", help="Checkpoint: a sparc-eval checkpoint folder, openclip:ARCH or openclip:ARCH@FILE."
    ),
    task: str = typer.Option(..., "--task", "-t", help="Segmentation task card name or path (e.g. synth-seg, voc-seg)."),
    n: int = typer.Option(8, "--n", help="Number of images (the first N of the evaluation split)."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNGs (one per image)."),
    data_dir: Path = typer.Option(
        Path("data"),
        "--data-dir",
        envvar="SPARC_EVAL_DATA",
        help="Where datasets live; SynthScenes is generated here on first use.",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow checkpoint files that need code to unpickle."),
) -> None:
    """Image | ground truth | prediction panels with a class legend, from the segmentation runner's own predictions (SPARC paper, Fig. 3).

    Example: sparc-eval viz seg --ckpt runs/quick/tiny-sparc --task synth-seg --n 8 --out pictures/synth-seg
    """
    from sparc_eval.viz.seg import render_segmentation

    for row in render_segmentation(
        ckpt, task, n, out, data_dir=data_dir, device=device, batch_size=batch_size, trust_pickle=trust_pickle
    ):
        miou = "n/a" if row["image_miou"] is None else f"{row['image_miou']:.1f}%"
        console.print(f"wrote {row['out']} (image mIoU {miou})", highlight=False)


# ---------------------------------------------------------------------------------------- kprecision


@app.command("kprecision")
def kprecision_cmd(
    pred: Path = typer.Option(..., "--pred", help='Captions to score, COCO results format: [{"image_id", "caption"}, ...].'),
    refs: Path = typer.Option(
        ..., "--refs", help='Reference captions, a COCO captions JSON ({"annotations": [{"image_id", "caption"}, ...]}).'
    ),
    max_over_captions: bool = typer.Option(
        False,
        "--max-over-captions",
        help="Score against each reference caption alone and keep the best (default: all of an image's captions joined into one reference).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Score any captioner's output: K-Precision, K-Pna (nouns and adjectives) and CIDEr-D, means over the predicted images.

    K-Pna needs the part-of-speech tagger and CIDEr pycocoevalcap (pip install 'sparc-eval[caption]'); without them they read n/a.

    Example: sparc-eval kprecision --pred results/captions.json --refs data/coco/annotations/captions_val2014.json
    """
    import json

    from rich.table import Table

    from sparc_eval.tasks.caption_scores import score_files

    scores = score_files(pred, refs, max_over_captions=max_over_captions)
    if json_out:
        print(json.dumps(scores, indent=2))
        return
    table = Table(title=f"{pred}: {scores['n']} captions scored ({scores['n_reference_images']} images in {refs})")
    for column in ("metric", "value", "what"):
        table.add_column(column)
    for name in ("kp", "kpna", "cider"):
        value = "n/a" if scores[name] is None else f"{scores[name]:.2f}"
        table.add_row(name, value, scores["info"][name])
    console.print(table)
    console.print(f"references: {scores['info']['references']}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning SparcEvalError into one line and exit code 2."""
    try:
        # Without standalone mode click returns a typer.Exit's code instead of exiting.
        code = app(args=argv, standalone_mode=False)
    except SparcEvalError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        # Usage errors (unknown command or option) show their own message and carry their own exit code;
        # typer >= 0.20 vendors click, so they are recognised by shape rather than by class.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

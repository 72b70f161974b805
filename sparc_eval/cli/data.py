"""`sparc-eval data ...`: generate, inspect and verify datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import console, data_app
from sparc_eval.errors import SparcEvalError


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

"""`sparc-eval data shards`: write a dataset as webdataset tar shards."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import console, data_app
from sparc_eval.errors import SparcEvalError


def require_webdataset(what: str) -> None:
    """Stop before any work when the `webdataset` library (the wds extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("webdataset") is None:
        raise SparcEvalError(
            f"{what} needs the optional library 'webdataset', which is not installed: pip install 'sparc-eval[wds]'"
        )


@data_app.command("shards")
def data_shards(
    src: Path = typer.Argument(
        ...,
        help="Source: a pairs .csv/.jsonl (or a folder holding SPLIT.jsonl, or a SynthScenes root), a COCO/Karpathy root, an ImageFolder root.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder to write (must not exist): NNNNNN.tar shards, MANIFEST.json, dataset_type.txt."
    ),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Samples (images) per shard."),
    fmt: str | None = typer.Option(
        None, "--format", help="Source format: pairs, karpathy, coco-captions or imagefolder (default: told from the layout)."
    ),
    split: str = typer.Option("train", "--split", help="Split of the source to write."),
    option: list[str] = typer.Option(
        [],
        "--option",
        help="KEY=VALUE reader option of the source format, e.g. --option annotation=karpathy/dataset_coco.json; repeatable.",
    ),
) -> None:
    """Write image-text pairs, COCO/Karpathy captions or an ImageFolder split as webdataset tar shards.

    One sample per image: the image's own bytes, its captions one per line in txt (or its class index in cls), and
    json with its source path. MANIFEST.json holds each shard's sample count, sha256 and md5, so `data check OUT`
    verifies the shards, and `train --data 'OUT/{000000..000031}.tar'` or a card with `format: webdataset` reads them.

    Example: sparc-eval data shards data/synthscenes --out data/synth-shards --shard-size 1000

    Example: sparc-eval data shards data/coco --format karpathy --split test --option annotation=karpathy/dataset_coco.json --out data/coco-test-wds
    """
    from sparc_eval.cli import checks

    require_webdataset("data shards")
    checks.at_least("--shard-size", shard_size, 1)
    checks.output_folder("--out", out, must_not_exist=True)
    if not src.exists():
        raise SparcEvalError(f"source {src} does not exist")
    options = {}
    for pair in option:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key:
            raise SparcEvalError(f"--option {pair!r} must look like KEY=VALUE, e.g. --option annotation=captions.json")
        options[key] = value
    from sparc_eval.data.shard_writer import write_shards

    summary = write_shards(src, out, fmt=fmt, split=split, shard_size=shard_size, options=options)
    last = f"{summary.n_shards - 1:06d}"
    console.print(
        f"wrote {summary.n_samples} samples ({summary.kind}) in {summary.n_shards} shards to {summary.out}: "
        f"--data '{summary.out}/{{000000..{last}}}.tar'",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )

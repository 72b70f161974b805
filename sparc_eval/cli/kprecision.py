"""`sparc-eval kprecision`: score any captioner's output."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import app, console


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

    from sparc_eval.cli import checks
    from sparc_eval.tasks.caption_scores import score_files

    checks.existing_file("--pred", pred)
    checks.existing_file("--refs", refs)
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

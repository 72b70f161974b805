"""`sparc-eval viz ...`: pictures."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import console, viz_app


@viz_app.command("align")
def viz_align(
    ckpt: str = typer.Option(
        ...,
        "--ckpt",
        help="Checkpoint: a sparc-eval checkpoint folder, openclip:ARCH[@FILE], openclip:local-dir:PATH or hf:PATH.",
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

    from sparc_eval.cli import checks
    from sparc_eval.viz.align import render_alignment

    checks.existing_file("--image", image)
    checks.output_file("--out", out, free_mib=4)
    checks.one_of("--head", head, ("local", "global"))
    summary = render_alignment(ckpt, image, caption, out, head=head, device=device, trust_pickle=trust_pickle)
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        console.print(f"wrote {out} ({summary['method']}; ground truth: {summary['ground_truth'] or 'none'})", highlight=False)


@viz_app.command("seg")
def viz_seg(
    ckpt: str = typer.Option(
        ...,
        "--ckpt",
        help="Checkpoint: a sparc-eval checkpoint folder, openclip:ARCH[@FILE], openclip:local-dir:PATH or hf:PATH.",
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
    from sparc_eval.cli import checks
    from sparc_eval.viz.seg import render_segmentation

    checks.between("--n", n, 1, 10_000)
    checks.at_least("--batch-size", batch_size, 1)
    checks.output_folder("--out", out, free_mib=4)
    checks.data_folder("--data-dir", data_dir)
    for row in render_segmentation(
        ckpt, task, n, out, data_dir=data_dir, device=device, batch_size=batch_size, trust_pickle=trust_pickle
    ):
        miou = "n/a" if row["image_miou"] is None else f"{row['image_miou']:.1f}%"
        console.print(f"wrote {row['out']} (image mIoU {miou})", highlight=False)

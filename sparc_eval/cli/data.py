"""`sparc-eval data ...`: generate, fetch, prepare, inspect and verify datasets."""

from __future__ import annotations

import contextlib
import json
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
    from sparc_eval.cli import checks
    from sparc_eval.data.synth import generate_synthscenes

    checks.seed("--seed", seed)
    checks.between("--n-train", n_train, 1, 10_000_000)
    checks.between("--n-val", n_val, 1, 10_000_000)
    checks.between("--image-size", image_size, 16, 4096)
    checks.at_least("--workers", workers, 0)
    # About 4 KiB per 64 px image and its annotations, scaled by area; a margin for the formats written beside it.
    checks.output_folder("--out", out, free_mib=int(16 + (n_train + 2 * n_val) * 4 * (image_size / 64) ** 2 / 1024))
    summary = generate_synthscenes(
        out, seed=seed, n_train=n_train, n_val=n_val, image_size=image_size, workers=workers, force=force
    )
    console.print(summary)


@data_app.command("check")
def data_check(
    root: Path | None = typer.Argument(None, help="Dataset folder holding a MANIFEST.json (the manifest check)."),
    task: str | None = typer.Option(None, "--task", help="Task card (name or path): list every file it reads instead."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Data folder the card's {data} stands for (with --task)."),
    sources: Path | None = typer.Option(None, "--sources", help="Sources list naming the fetch commands (default: built in)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (with --task)."),
) -> None:
    """Verify data: a tree against its MANIFEST.json, or (--task) everything a task card will read.

    With --task: each file and folder the card reads, present or missing, and the command that fetches or prepares it.

    Exit code 0 only when the card can run (2 otherwise, naming the first gap).

    Examples: sparc-eval data check data/synthscenes
              sparc-eval data check --task coco-retrieval --data-dir data
    """
    if task is not None:
        if root is not None:
            raise SparcEvalError("give either a manifest ROOT or --task, not both")
        from sparc_eval.data.download import load_sources
        from sparc_eval.tasks.doctor import diagnose

        report = diagnose(task, data_dir, load_sources(sources))
        if json_out:
            print(json.dumps(report.to_json()))
        else:
            console.print(report.table())
        if not report.ok:
            raise SparcEvalError(report.first_problem)
        return
    if root is None:
        raise SparcEvalError("give a dataset folder holding a MANIFEST.json, or --task NAME")
    from sparc_eval.data.manifest import check_tree

    report = check_tree(root)
    console.print(report.table())
    if not report.ok:
        raise SparcEvalError(f"{root}: {report.first_problem}")


@data_app.command("get")
def data_get(
    names: list[str] = typer.Argument(None, help="Datasets to fetch (see --list), e.g. coco2017-val karpathy."),
    root: Path = typer.Option(Path("data"), "--root", help="Data folder to install into (the --data-dir of `run`)."),
    sources: Path | None = typer.Option(None, "--sources", help="Sources list replacing the built-in one (mirrors, tests)."),
    force: bool = typer.Option(False, "--force", help="Fetch and install again over what is there."),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="Keep the downloaded archives in ROOT/.downloads."),
    retries: int = typer.Option(3, "--retries", help="Times a dropped connection is resumed before giving up."),
    max_unpacked_gb: float = typer.Option(64.0, "--max-unpacked-gb", help="Refuse an archive that unpacks to more."),
    max_ratio: float = typer.Option(100.0, "--max-ratio", help="Refuse an archive that unpacks to more than this x its size."),
    list_: bool = typer.Option(False, "--list", help="List the datasets of the sources list and exit."),
) -> None:
    """Download datasets into the layouts the task cards read: resumable, verified, unpacked safely.

    Files stream with a progress bar; an interrupted download resumes with an HTTP Range request.

    Sizes (and checksums the sources list marks verified) are checked before anything is unpacked.

    Archives unpack into a temporary folder, refusing paths outside it, links, devices and bombs, then move into place.

    ImageNet and Flickr30k need a login: the command says where to get them and which `data prepare` to run (exit 2).

    Example: sparc-eval data get karpathy coco2014-val --root data
    """
    from sparc_eval.data.archives import UnpackLimits
    from sparc_eval.data.download import get_dataset, load_sources

    listing = load_sources(sources)
    if list_:
        _print_sources(listing)
        return
    if not names:
        raise SparcEvalError("name at least one dataset (sparc-eval data get --list shows them)")
    if retries < 0:
        raise SparcEvalError(f"--retries must be 0 or more, got {retries}")
    if not max_unpacked_gb > 0 or not max_ratio >= 1:
        raise SparcEvalError("--max-unpacked-gb must be positive and --max-ratio at least 1")
    if root.exists() and not root.is_dir():
        raise SparcEvalError(f"--root {root} is a file, not a folder")
    limits = UnpackLimits(max_bytes=int(max_unpacked_gb * 1024**3), max_ratio=max_ratio)
    login = []
    made = [p for p in (root, *root.parents) if not p.exists()]
    try:
        for name in listing.expand(names):
            report = get_dataset(name, root, listing, force=force, keep_archives=keep_archives, retries=retries, limits=limits)
            if report.status == "login":
                login.extend(report.lines)
                continue
            for line in report.lines:
                console.print(line, highlight=False)
    except SparcEvalError:
        for folder in made:  # nothing is left behind, not even the folders this run made (innermost first)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if login:
        for line in login[:-1]:
            console.print(line, highlight=False)
        raise SparcEvalError(login[-1])


def _print_sources(listing) -> None:  # noqa: ANN001 (download.Sources, imported lazily)
    from rich.table import Table

    table = Table(title=f"datasets of {listing.path}")
    for column in ("name", "download", "description"):
        table.add_column(column)
    for name, ds in listing.datasets.items():
        sizes = [f.size for f in ds.files]
        if ds.login:
            size = "needs a login"
        elif ds.includes:
            size = " + ".join(ds.includes)
        elif None in sizes:
            size = "size not listed"
        else:
            size = f"{sum(sizes) / 1e9:.2f} GB"
        table.add_row(name, size, ds.description)
    console.print(table)


prepare_app = typer.Typer(
    help="Build a card's layout from official files that need a login to download.\n\n"
    "Example: sparc-eval data prepare imagenet --val-tar ILSVRC2012_img_val.tar --devkit ILSVRC2012_devkit_t12.tar.gz --root data",
    no_args_is_help=True,
)
data_app.add_typer(prepare_app, name="prepare")


@prepare_app.command("imagenet")
def prepare_imagenet_command(
    val_tar: Path = typer.Option(..., "--val-tar", help="ILSVRC2012_img_val.tar (50,000 validation JPEGs)."),
    devkit: Path = typer.Option(..., "--devkit", help="ILSVRC2012_devkit_t12.tar.gz (meta.mat and the ground truth)."),
    root: Path = typer.Option(Path("data"), "--root", help="Data folder: writes ROOT/imagenet/val/<wnid>/."),
    force: bool = typer.Option(False, "--force", help="Replace an existing ROOT/imagenet/val."),
) -> None:
    """Sort the ILSVRC-2012 validation images into the synset folders imagenet-zs reads.

    Example: sparc-eval data prepare imagenet --val-tar ILSVRC2012_img_val.tar --devkit ILSVRC2012_devkit_t12.tar.gz --root data
    """
    from sparc_eval.data.prepare import prepare_imagenet

    for line in prepare_imagenet(val_tar, devkit, root, force=force):
        console.print(line, highlight=False)


@prepare_app.command("flickr30k")
def prepare_flickr30k_command(
    images: Path = typer.Option(..., "--images", help="flickr30k-images.tar.gz (or .zip) as the Flickr30k form gives it."),
    root: Path = typer.Option(Path("data"), "--root", help="Data folder: writes ROOT/flickr30k/flickr30k-images/."),
    karpathy: Path | None = typer.Option(
        None,
        "--karpathy",
        help="dataset_flickr30k.json or caption_datasets.zip (default: ROOT/flickr30k/dataset_flickr30k.json).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing files."),
) -> None:
    """Unpack the Flickr30k images beside the Karpathy split file, the layout flickr-retrieval reads.

    Example: sparc-eval data get karpathy --root data && sparc-eval data prepare flickr30k --images flickr30k-images.tar.gz --root data
    """
    from sparc_eval.data.prepare import prepare_flickr30k

    for line in prepare_flickr30k(images, root, karpathy=karpathy, force=force):
        console.print(line, highlight=False)


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
    import yaml
    from rich.table import Table

    from sparc_eval.cli import checks
    from sparc_eval.data.registry import open_dataset
    from sparc_eval.progress import track

    checks.at_least("--limit", limit, 0)

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

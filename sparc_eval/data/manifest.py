"""Verify a dataset tree against its MANIFEST.json: files present, md5s match, images decode, annotations resolve.

Annotations are resolved by opening each annotation file with the reader a task would use, so `data check`
passing means the readers will open the tree.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from rich.table import Table

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MD5 = re.compile(r"[0-9a-f]{32}")
# Top-level folder -> format name shown in the table.
_FORMATS = {
    "scenes.json": "scenes",
    "images": "images",
    "coco": "coco",
    "karpathy": "karpathy",
    "VOCdevkit": "voc",
    "imagefolder": "imagefolder",
    "pairs": "pairs",
}


@dataclass
class FormatRow:
    files: int = 0
    images_decoded: int = 0
    annotations_resolved: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    root: Path
    rows: dict[str, FormatRow] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> str | None:
        return self.problems[0] if self.problems else None

    def problem(self, fmt: str, text: str) -> None:
        self.rows.setdefault(fmt, FormatRow()).problems.append(text)
        self.problems.append(text)

    def table(self) -> Table:
        table = Table(title=f"data check {self.root}")
        for col in ("format", "files", "images decoded", "annotations resolved", "status"):
            table.add_column(col, justify="left" if col in ("format", "status") else "right")
        order = list(_FORMATS.values())
        for name, row in sorted(self.rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
            status = "[green]ok[/]" if not row.problems else f"[red]{len(row.problems)} problem(s)[/]"
            table.add_row(name, str(row.files), str(row.images_decoded), str(row.annotations_resolved), status)
        return table


def _format_of(rel: str) -> str:
    if rel.endswith(".tar"):
        return "webdataset"
    return _FORMATS.get(rel.split("/", 1)[0], "other")


def check_tree(root: str | Path) -> CheckReport:
    root = Path(root)
    report = CheckReport(root)
    manifest_path = root / "MANIFEST.json"
    if not manifest_path.is_file():
        report.problem("manifest", f"{manifest_path} does not exist")
        return report
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        report.problem("manifest", f"{manifest_path} is not a manifest (valid JSON with a 'files' map)")
        return report
    if not isinstance(files, dict):
        report.problem("manifest", f"{manifest_path} is not a manifest ('files' must map paths to md5 sums)")
        return report
    # A manifest names files relative to its root and nothing else: an entry leading outside is refused before
    # anything is read.
    for rel, md5 in files.items():
        inside(root, rel, f"{manifest_path}: entry", follow_links=False)
        if not isinstance(md5, str) or not _MD5.fullmatch(md5):
            raise SparcEvalError(f"{manifest_path}: entry {rel!r} has md5 {md5!r}, not 32 hexadecimal digits")

    for rel, md5 in files.items():
        fmt = _format_of(rel)
        row = report.rows.setdefault(fmt, FormatRow())
        row.files += 1
        path = root / rel
        if not path.is_file():
            report.problem(fmt, f"{path} is listed in MANIFEST.json but missing")
            continue
        data = path.read_bytes()
        if hashlib.md5(data).hexdigest() != md5:
            report.problem(fmt, f"{path} does not match its md5 in MANIFEST.json")
            continue
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                row.images_decoded += 1
            except (OSError, SyntaxError, ValueError) as exc:
                report.problem(fmt, f"image {path} does not decode ({' '.join(str(exc).split())})")

    if report.ok:  # annotation checks would only repeat a missing or altered file's problem
        for fmt, check in _annotation_checks(root, files):
            try:
                report.rows[fmt].annotations_resolved += check()
            except SparcEvalError as exc:
                report.problem(fmt, str(exc))
    return report


def _annotation_checks(root: Path, files: dict[str, str]) -> list[tuple[str, Callable[[], int]]]:
    """(format, check) for each annotation file in the manifest; a check opens it with its reader and
    returns how many annotations resolved."""
    from sparc_eval.data.registry import open_dataset

    checks: list[tuple[str, Callable[[], int]]] = []
    imagefolder_splits = set()
    for rel in files:
        parts, path = Path(rel).parts, root / rel
        if parts[:2] == ("coco", "annotations") and path.suffix == ".json":
            kind, _, split = path.stem.partition("_")
            if kind == "captions":
                checks.append(
                    (
                        "coco",
                        lambda p=path, s=split: sum(
                            map(len, open_dataset("coco-captions", root / "images", s, annotation=str(p)).captions)
                        ),
                    )
                )
            elif kind == "instances":
                checks.append(
                    (
                        "coco",
                        lambda p=path, s=split: len(
                            open_dataset("coco-instances", root / "images", s, annotation=str(p)).coco.anns
                        ),
                    )
                )
        elif parts[0] == "karpathy" and path.suffix == ".json":
            checks.append(
                (
                    "karpathy",
                    lambda p=path: sum(len(open_dataset("karpathy", root, s, annotation=str(p))) for s in _karpathy_splits(p)),
                )
            )
        elif parts[0] == "VOCdevkit" and parts[2:4] == ("ImageSets", "Segmentation") and path.suffix == ".txt":
            checks.append(
                (
                    "voc",
                    lambda p=path, d=root.joinpath(*parts[:2]): len(open_dataset("voc", d, p.stem, classnames="classnames.txt")),
                )
            )
        elif parts[0] == "pairs" and path.suffix in (".csv", ".jsonl"):
            checks.append(("pairs", lambda p=path: len(open_dataset("pairs", p, p.stem))))
        elif rel == "scenes.json":
            checks.append(("scenes", lambda p=path: _check_scenes(root, p)))
        elif parts[0] == "imagefolder" and len(parts) == 4:
            imagefolder_splits.add(parts[1])
    for split in sorted(imagefolder_splits):
        checks.append(("imagefolder", lambda s=split: len(open_dataset("imagefolder", root / "imagefolder", s))))
    if any(rel.endswith(".tar") for rel in files):  # `data shards` output: sample counts, images, captions / labels
        from sparc_eval.data.webdataset import verify_shards

        checks.append(("webdataset", lambda: verify_shards(root)))
    return checks


def _check_scenes(root: Path, path: Path) -> int:
    """scenes.json: every image's file exists; returns the number of objects described."""
    from sparc_eval.data.common import load_json, require_images

    data = load_json(path, "scene file")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(
        isinstance(img, dict) and isinstance(img.get("file_name"), str) and isinstance(img.get("objects"), list) for img in images
    ):
        raise SparcEvalError(f"scene file {path} is not a SynthScenes scene list (images with file_name and objects)")
    require_images([inside(root, img["file_name"], f"scene file {path}: file_name", follow_links=False) for img in images], path)
    return sum(len(img["objects"]) for img in images)


def _karpathy_splits(path: Path) -> list[str]:
    """The reader's splits present in a Karpathy file ("restval" is read as part of "train")."""
    from sparc_eval.data.common import load_json

    data = load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(img, dict) and isinstance(img.get("split"), str) for img in images):
        raise SparcEvalError(f"annotation file {path} is not a Karpathy split file (an 'images' list, each with a 'split')")
    return sorted({"train" if img["split"] == "restval" else img["split"] for img in images})

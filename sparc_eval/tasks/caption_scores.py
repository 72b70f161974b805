"""Scoring captions against references: per-caption K-P, K-Pna and CIDEr, their means, and COCO caption files.

Shared by the captioning runner and `sparc-eval kprecision`; it imports no torch, so the command starts fast.
Scores are percent (K-P, K-Pna) and x100 (CIDEr-D), as papers report them.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from sparc_eval.errors import SparcEvalError
from sparc_eval.metrics.cider import cider, cider_available
from sparc_eval.metrics.kprecision import k_precision, k_precision_na, pos_tagger, pos_tagger_description

METRIC_NAMES = ("kp", "kpna", "cider")


def score_captions(
    predictions: Sequence[str], references: Sequence[Sequence[str]], *, max_over_captions: bool = False
) -> list[dict[str, float | None]]:
    """Per-caption kp, kpna and cider (percent / x100), None where the tagger or pycocoevalcap is missing."""
    try:
        tagger = pos_tagger()
    except ImportError:  # kpna is then null, and the record's info says why
        tagger = None
    ciders = cider(dict(enumerate(predictions)), dict(enumerate(references)))[1] if cider_available() and predictions else None
    rows = []
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        rows.append(
            {
                "kp": 100.0 * k_precision(pred, refs, max_over_captions=max_over_captions),
                "kpna": None
                if tagger is None
                else 100.0 * k_precision_na(pred, refs, max_over_captions=max_over_captions, tagger=tagger),
                "cider": None if ciders is None else 100.0 * ciders[i],
            }
        )
    return rows


def mean_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Each metric's mean over the rows; None if any row lacks it or there are no rows."""
    out: dict[str, float | None] = {}
    for name in METRIC_NAMES:
        values = [row.get(name) for row in rows]
        out[name] = None if not values or any(v is None for v in values) else sum(values) / len(values)
    return out


def scoring_info(max_over_captions: bool) -> dict[str, str]:
    """What the scores mean, for records and the CLI's JSON."""
    return {
        "references": "max over the reference captions" if max_over_captions else "reference captions joined into one",
        "kp": "K-Precision (Adlakha et al. 2023, instruct-qa normalisation), percent",
        "kpna": pos_tagger_description()
        or "no part-of-speech tagger installed (pip install 'sparc-eval[caption]'): kpna is null",
        "cider": "pycocoevalcap CIDEr-D x 100, captions lowercased and stripped of punctuation (no Java PTB tokenizer)"
        if cider_available()
        else "pycocoevalcap not installed (pip install 'sparc-eval[caption]'): cider is null",
    }


# ------------------------------------------------------------------------------ COCO files (for `sparc-eval kprecision`)


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise SparcEvalError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SparcEvalError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise SparcEvalError(f"{what} {path} is not UTF-8 text") from None


def _caption_item(item: Any, path: Path, where: str) -> tuple[Hashable, str]:
    ok = isinstance(item, dict) and isinstance(item.get("caption"), str) and type(item.get("image_id")) in (int, str)
    if not ok:
        raise SparcEvalError(f"{path}: {where} is not an object with an integer or string image_id and a string caption")
    return item["image_id"], item["caption"]


def load_coco_results(path: str | Path) -> dict[Hashable, str]:
    """Captions in COCO results format, [{"image_id", "caption"}, ...], one per image."""
    path = Path(path)
    raw = _load_json(path, "predictions file")
    if not isinstance(raw, list) or not raw:
        raise SparcEvalError(
            f'predictions file {path} must be a non-empty JSON list of {{"image_id", "caption"}} objects (COCO results format)'
        )
    out: dict[Hashable, str] = {}
    for i, item in enumerate(raw):
        image_id, caption = _caption_item(item, path, f"item {i}")
        if image_id in out:
            raise SparcEvalError(f"predictions file {path} has more than one caption for image_id {image_id!r}")
        out[image_id] = caption
    return out


def load_coco_captions(path: str | Path) -> dict[Hashable, list[str]]:
    """Reference captions by image id from a COCO captions file ({"annotations": [{"image_id", "caption"}, ...]})."""
    path = Path(path)
    raw = _load_json(path, "reference captions file")
    if not isinstance(raw, dict) or not isinstance(raw.get("annotations"), list):
        raise SparcEvalError(f"reference captions file {path} is not a COCO captions file (no 'annotations' list)")
    out: dict[Hashable, list[str]] = {}
    for i, item in enumerate(raw["annotations"]):
        image_id, caption = _caption_item(item, path, f"annotation {i}")
        out.setdefault(image_id, []).append(caption)
    return out


def score_files(pred_path: str | Path, refs_path: str | Path, *, max_over_captions: bool = False) -> dict[str, Any]:
    """`sparc-eval kprecision`: score a COCO results file against a COCO captions file."""
    preds = load_coco_results(pred_path)
    refs = load_coco_captions(refs_path)
    missing = [i for i in preds if i not in refs]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SparcEvalError(f"image_id {missing[0]!r} of {pred_path} has no reference caption in {refs_path}{more}")
    ids = list(preds)
    rows = score_captions([preds[i] for i in ids], [refs[i] for i in ids], max_over_captions=max_over_captions)
    return {**mean_scores(rows), "n": len(ids), "n_reference_images": len(refs), "info": scoring_info(max_over_captions)}

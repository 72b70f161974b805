"""CIDEr-D of captions against their references, scored by the COCO caption evaluation code (`pycocoevalcap`).

pycocoevalcap's `Cider` is pure Python; only its PTB tokenizer needs Java. Captions are tokenised here
instead (lowercase, ASCII punctuation dropped, whitespace split), which differs from the PTB tokenizer
only on rare contractions and non-ASCII punctuation. Document frequencies come from the references of
the scored set, so per-image values depend on the whole set; their mean is the corpus score.
"""

from __future__ import annotations

import importlib.util
import string
from collections.abc import Hashable, Mapping, Sequence

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def caption_tokens(text: str) -> str:
    """The whitespace-joined tokens CIDEr compares."""
    return " ".join(text.lower().translate(_DROP_PUNCTUATION).split())


def cider_available() -> bool:
    return importlib.util.find_spec("pycocoevalcap") is not None


def cider(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> tuple[float, dict[Hashable, float]]:
    """Corpus CIDEr-D (pycocoevalcap's scale, 1.0 = 100 in papers) and the per-image values, keyed like the inputs."""
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        raise ImportError("CIDEr needs pycocoevalcap: install it with pip install 'sparc-eval[caption]'") from None
    if set(predictions) != set(references):
        raise ValueError("predictions and references must cover the same images")
    if not predictions or any(len(references[k]) == 0 for k in predictions):
        raise ValueError("every image needs at least one reference caption")
    keys = list(predictions)
    gts = {i: [caption_tokens(r) for r in references[k]] for i, k in enumerate(keys)}
    res = {i: [caption_tokens(predictions[k])] for i, k in enumerate(keys)}
    score, per_image = Cider().compute_score(gts, res)
    return float(score), {k: float(v) for k, v in zip(keys, per_image)}

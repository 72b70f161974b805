"""K-Precision (Adlakha et al. 2023, instruct-qa's `KPrecision`) and its noun/adjective variant K-Pna (SPARC, Sec. 5).

K-P = |Counter(prediction tokens) ∩ Counter(reference tokens)| / len(prediction tokens): the share of the
prediction's tokens found in the reference. Tokens follow instruct-qa's normalisation exactly: lowercase,
drop ASCII punctuation, remove the articles a/an/the, split on whitespace. An empty prediction scores 0.

Several reference captions are joined into one reference by default, as instruct-qa joins evidence
passages; `max_over_captions=True` scores against each caption alone and keeps the best.

K-Pna keeps only the prediction tokens a part-of-speech tagger reads as nouns (NOUN, PROPN) or
adjectives (ADJ); the reference stays whole. The tagger is the averaged perceptron of the PyPI package
`denckring-en-pos` (UD English-EWT, JSON weights inside the wheel, no download at run time).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
# Universal POS tags that count as nouns or adjectives for K-Pna.
NOUN_ADJ_TAGS = frozenset({"NOUN", "PROPN", "ADJ"})

# A tagger maps a sentence (list of words) to one universal POS tag per word.
Tagger = Callable[[list[str]], list[str]]


def _strip_punctuation(text: str) -> str:
    return "".join(ch for ch in text if ch not in _PUNCTUATION)


def normalize_text(text: str) -> str:
    """instruct-qa's `_normalize_text`: lowercase, drop punctuation, remove articles, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", _strip_punctuation(text.lower())).split())


def tokens(text: str) -> list[str]:
    """The tokens K-Precision counts."""
    return normalize_text(text).split()


def precision(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """Share of prediction tokens (with multiplicity) matched in the reference; 0 for an empty prediction."""
    if not prediction_tokens:
        return 0.0
    common = Counter(prediction_tokens) & Counter(reference_tokens)
    return sum(common.values()) / len(prediction_tokens)


def _score(pred: list[str], references: Sequence[str], max_over_captions: bool) -> float:
    if isinstance(references, str):
        raise TypeError("references must be a sequence of captions, not one string")
    if max_over_captions:
        return max((precision(pred, tokens(ref)) for ref in references), default=0.0)
    return precision(pred, tokens(" ".join(references)))


def k_precision(prediction: str, references: Sequence[str], *, max_over_captions: bool = False) -> float:
    """K-P of one prediction against its reference captions, in [0, 1]."""
    return _score(tokens(prediction), references, max_over_captions)


def noun_adj_tokens(prediction: str, tagger: Tagger) -> list[str]:
    """The K-P tokens of `prediction` that the tagger reads as nouns or adjectives.

    The tagger sees the words with their case and articles (context it was trained with); each word
    then yields its lowercased, article-free tokens. Lowercasing commutes with dropping ASCII
    punctuation and article removal cannot cross whitespace, so the tokens produced are exactly
    `tokens(prediction)`, each carrying the tag of the word it came from.
    """
    words = _strip_punctuation(prediction).split()
    if not words:
        return []
    tags = tagger(words)
    return [
        tok
        for word, tag in zip(words, tags, strict=True)
        if tag in NOUN_ADJ_TAGS
        for tok in _ARTICLES.sub(" ", word.lower()).split()
    ]


def k_precision_na(
    prediction: str, references: Sequence[str], *, max_over_captions: bool = False, tagger: Tagger | None = None
) -> float:
    """K-Pna: K-P over the prediction's nouns and adjectives only, in [0, 1]; 0 when it has none."""
    return _score(noun_adj_tokens(prediction, tagger or pos_tagger()), references, max_over_captions)


@lru_cache(maxsize=1)
def pos_tagger() -> Tagger:
    """The bundled part-of-speech tagger (universal tags), loaded once; ImportError naming the extra when not installed."""
    try:
        import denckring_en_pos
    except ImportError:
        raise ImportError(
            "K-Pna needs a part-of-speech tagger: install it with pip install 'sparc-eval[caption]' "
            "(the PyPI package denckring-en-pos, Python >= 3.11)"
        ) from None
    model = denckring_en_pos.tagger()
    # Its labels are "UPOS|VerbForm", e.g. "VERB|Ger"; K-Pna needs the UPOS part only.
    return lambda words: [label.partition("|")[0] for label in model.tag(words)]


def pos_tagger_description() -> str | None:
    """Which tagger K-Pna uses (for result records), or None when none is installed."""
    try:
        pos_tagger()
    except ImportError:
        return None
    from importlib.metadata import version

    return f"denckring-en-pos {version('denckring-en-pos')} averaged perceptron (UD English-EWT), tags NOUN/PROPN/ADJ"

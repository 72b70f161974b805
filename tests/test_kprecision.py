"""K-Precision / K-Pna / CIDEr on hand-worked examples (instruct-qa's definition, SPARC's noun/adjective variant)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparc_eval.metrics import kprecision as kp
from sparc_eval.metrics.kprecision import k_precision, k_precision_na, normalize_text, noun_adj_tokens, tokens


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A Red Circle.", "red circle"),  # lowercase, punctuation, article
        ("the THE an An a", ""),  # only articles
        ("banana, another, theatre", "banana another theatre"),  # articles only as whole words
        ("left-most", "leftmost"),  # punctuation is deleted, not replaced by a space
        ("  two\tblue\n squares  ", "two blue squares"),
        ("a man's hat", "mans hat"),
        ("a’s", "’s"),  # non-ASCII punctuation stays, so the article regex still sees a word boundary after 'a'
    ],
)
def test_normalisation_follows_instruct_qa(text, expected):
    assert normalize_text(text) == expected


def test_repeated_tokens_count_once_per_reference_occurrence():
    # prediction [red, red, red, circle]; reference [red, circle]: red matches once, circle once -> 2/4
    assert k_precision("red red red circle", ["a red circle"]) == 0.5
    # two reds in the reference allow two matches -> 3/4
    assert k_precision("red red red circle", ["a red circle and a red square"]) == 0.75


def test_punctuation_and_articles_do_not_count():
    assert k_precision("The red circle!", ["a red, circle."]) == 1.0
    # "left-most" becomes "leftmost", which is not a reference token -> 1/2
    assert k_precision("left-most circle", ["the left most circle"]) == 0.5


def test_empty_prediction_scores_zero():
    assert k_precision("", ["a red circle"]) == 0.0
    assert k_precision("a the . !", ["a red circle"]) == 0.0  # nothing left after normalisation
    assert k_precision("blue", []) == 0.0


def test_joined_references_vs_max_over_captions():
    refs = ["a red circle", "a blue square"]
    # joined: all four tokens are in "red circle blue square"; each caption alone holds two of them
    assert k_precision("red circle blue square", refs) == 1.0
    assert k_precision("red circle blue square", refs, max_over_captions=True) == 0.5
    # multiplicity adds up over joined captions: "red red" finds two reds only when joined
    assert k_precision("red red", ["red", "red"]) == 1.0
    assert k_precision("red red", ["red", "red"], max_over_captions=True) == 0.5
    # the best caption wins: 1/3 against the first, 2/3 against the second
    assert k_precision("red blue square", ["a red circle", "a blue square"], max_over_captions=True) == pytest.approx(2 / 3)


def test_references_must_be_a_list_of_captions():
    with pytest.raises(TypeError):
        k_precision("red", "red circle")


_WORDS = st.sampled_from(["red", "blue", "circle", "a", "the", "an", "square", "Red", "circle.", "x"])


@given(st.lists(_WORDS, max_size=8), st.lists(st.lists(_WORDS, max_size=6), min_size=1, max_size=3))
def test_precision_equals_a_brute_force_count(pred_words, ref_captions):
    """K-P against matching each prediction token to a distinct unused reference token, one at a time."""
    pred, refs = " ".join(pred_words), [" ".join(c) for c in ref_captions]
    pool = tokens(" ".join(refs))
    pred_tokens = tokens(pred)
    matched = 0
    for tok in pred_tokens:
        if tok in pool:
            pool.remove(tok)
            matched += 1
    expected = matched / len(pred_tokens) if pred_tokens else 0.0
    assert k_precision(pred, refs) == pytest.approx(expected)


# ------------------------------------------------------------------------------ K-Pna


def _stub_tagger(words: list[str]) -> list[str]:
    table = {"red": "ADJ", "circle": "NOUN", "Paris": "PROPN", "runs": "VERB", "a": "DET", "the": "DET"}
    return [table.get(w, "X") for w in words]  # case-sensitive: the tagger sees the words as written


def test_kpna_keeps_nouns_and_adjectives_only():
    # nouns/adjectives of the prediction: red (ADJ), circle (NOUN), paris (PROPN); "runs" (VERB) is dropped
    assert noun_adj_tokens("The red circle runs to Paris!", _stub_tagger) == ["red", "circle", "paris"]
    # reference holds red and circle, not paris -> 2/3 (the VERB "runs" would not have counted either way)
    assert k_precision_na("The red circle runs to Paris!", ["a red circle runs"], tagger=_stub_tagger) == pytest.approx(2 / 3)
    assert k_precision_na("runs", ["runs"], tagger=_stub_tagger) == 0.0  # no noun or adjective -> 0


def test_kpna_tokens_are_exactly_the_kp_tokens_of_the_tagged_words():
    every_word_a_noun = lambda words: ["NOUN"] * len(words)  # noqa: E731
    for text in ["A man's hat, the end.", "a’s thing", "", "the", "The Big Apple", "ÉTÉ An Île"]:
        assert noun_adj_tokens(text, every_word_a_noun) == tokens(text)


def test_kpna_with_the_bundled_tagger():
    pytest.importorskip("denckring_en_pos")
    # tagger: man NOUN, is AUX, riding VERB, red ADJ, bicycle NOUN, quickly ADV -> [man, red, bicycle]
    pred, refs = "A man is riding a red bicycle quickly.", ["a man on a blue bicycle"]
    assert noun_adj_tokens(pred, kp.pos_tagger()) == ["man", "red", "bicycle"]
    assert k_precision_na(pred, refs) == pytest.approx(2 / 3)
    assert k_precision(pred, refs) == pytest.approx(2 / 6)  # man, bicycle of man/is/riding/red/bicycle/quickly
    assert kp.pos_tagger_description().startswith("denckring-en-pos")


def test_kpna_without_a_tagger_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "denckring_en_pos", None)  # makes the import fail
    kp.pos_tagger.cache_clear()
    try:
        with pytest.raises(ImportError, match="K-Pna needs a part-of-speech tagger"):
            k_precision_na("a red circle", ["a red circle"])
        assert kp.pos_tagger_description() is None
        assert k_precision("a red circle", ["a red circle"]) == 1.0  # K-P still works
    finally:
        kp.pos_tagger.cache_clear()


# ------------------------------------------------------------------------------ CIDEr


def test_cider_wrapper_matches_pycocoevalcap_on_pre_tokenised_captions():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    from sparc_eval.metrics.cider import cider

    preds = {"b": "A red circle!", 7: "Two blue squares."}
    refs = {"b": ["a red circle", "one red circle"], 7: ["two blue squares", "a pair of blue squares"]}
    score, per_image = cider(preds, refs)
    # the same captions, tokenised by hand, scored by pycocoevalcap directly (keys in a different order)
    gts = {1: ["two blue squares", "a pair of blue squares"], 0: ["a red circle", "one red circle"]}
    res = {1: ["two blue squares"], 0: ["a red circle"]}
    ref_score, ref_scores = Cider().compute_score(gts, res)
    assert score == pytest.approx(ref_score)
    assert per_image[7] == pytest.approx(ref_scores[0]) and per_image["b"] == pytest.approx(ref_scores[1])
    assert score == pytest.approx((per_image[7] + per_image["b"]) / 2)

"""Hard negatives for SynthScenes, made from each scene's own objects, and a checker that reads a caption back.

For every test image the generator writes one positive caption and, per negative type, one minimally
changed false caption, in SugarCrepe's released layout (one JSON per type, entries keyed by id with
`filename`, `caption`, `negative_caption`), so the reader of SugarCrepe reads them and so do peer harnesses:

- attribute_swap: two groups trade colours ("a red circle and a blue square" -> "a blue circle and a red
  square"), or sizes when no colour swap is false;
- colour_replace: one group's colour becomes a colour absent from the scene;
- size_replace: one group's size flips (small <-> large);
- count_change: the number of objects, one more or one fewer ("three shapes" -> "two shapes"; 1 to 4, the
  direction drawn where both exist). Not a group's count ("a red circle" -> "two red circles"): nearly every
  SynthScenes group is a single object, so that edit would almost always go one way, which a text prior alone
  could exploit (docs/fine-grained.md);
- object_replace: one group's shape becomes a shape absent from the scene;
- relation_swap: "A to the left of B" -> "A to the right of B" (above <-> below), objects kept.

The positive of attribute_swap and the replace types is the scene's inventory ("two red circles, a small blue
square and a large green star"), count_change's the number of objects ("three shapes"), relation_swap's one
relation between two objects. A positive that occurs verbatim among the train captions (normalised: lower case,
single spaces, no final full stop) is dropped with its negative, so no positive is one the model was trained on.

The checker (`parse_caption`, `caption_holds`) is written apart from the generator: it parses the text with
its own grammar (refusing ungrammatical captions) and evaluates it against the scene's objects under two
readings, exact ("two red circles": exactly two red circles, all of the stated size) and at-least ("two
red circles": at least two red circles of the stated size). Positives hold under both; negatives fail under
the exact reading, the one SugarCrepe takes too ("Two planes ..." -> "A plane ..." is one of its negatives),
and all but the downward count changes fail under the at-least reading as well (tests/test_synth_negatives.py).

Relations are read from the objects' visible box centres: "A to the left of B" holds when A's centre lies
left of B's by more than RELATION_MARGIN of the image width ("above": higher by that share of the height).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparc_eval.data.synth import COLOURS, SHAPES, SIZES

NEGATIVE_TYPES = ("attribute_swap", "colour_replace", "size_replace", "relation_swap", "count_change", "object_replace")
HARD_NEGATIVES_DIR = "hard_negatives"
SPLITS = ("test",)  # the split whose images no model was trained on
RELATION_MARGIN = 0.125  # share of the image side by which box centres must differ for a relation to hold
_RELATIONS = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
_NUMBER_WORDS = ("a", "two", "three", "four")  # "a" = one; counts above four never occur (at most 4 objects)
_COUNT_WORDS = ("one", "two", "three", "four")


def hard_negative_files(scenes: dict[str, Any], seed: int) -> dict[str, str]:
    """The hard-negative files of a SynthScenes tree, {relpath: JSON text}, from its scenes.json object."""
    trained = {_normalise(c["text"]) for img in scenes["images"] if img["split"] == "train" for c in img["captions"]}
    out: dict[str, str] = {}
    for split in SPLITS:
        entries: dict[str, dict[str, dict[str, str]]] = {t: {} for t in NEGATIVE_TYPES}
        for img in scenes["images"]:
            if img["split"] != split:
                continue
            for kind, pair in scene_hard_negatives(img, seed).items():
                if pair is not None and _normalise(pair[0]) not in trained:
                    entries[kind][str(img["image_id"])] = {
                        "filename": img["file_name"].split("/", 1)[1],  # relative to images/
                        "caption": pair[0],
                        "negative_caption": pair[1],
                    }
        for kind, table in entries.items():
            out[f"{HARD_NEGATIVES_DIR}/{split}/{kind}.json"] = json.dumps(table, indent=1) + "\n"
    return out


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".").strip()


# ------------------------------------------------------------------------------------------ generator


@dataclass(frozen=True)
class _Group:
    """The objects sharing a colour and shape; `size` only when all of them share it."""

    colour: str
    shape: str
    count: int
    size: str | None

    def phrase(self) -> str:
        words = [_NUMBER_WORDS[self.count - 1], *([self.size] if self.size else []), self.colour]
        return " ".join([*words, self.shape if self.count == 1 else _plural(self.shape)])


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _scene_groups(objects: list[dict]) -> list[_Group]:
    members: dict[tuple[str, str], list[dict]] = {}
    for o in objects:
        members.setdefault((o["colour"], o["shape"]), []).append(o)
    return [
        _Group(colour, shape, len(objs), objs[0]["size"] if len({o["size"] for o in objs}) == 1 else None)
        for (colour, shape), objs in members.items()
    ]


def _how_many(n: int) -> str:
    return f"{_COUNT_WORDS[n - 1]} shape{'s' if n > 1 else ''}"


def _inventory(groups: list[_Group]) -> str:
    phrases = [g.phrase() for g in groups]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def scene_hard_negatives(image: dict, seed: int) -> dict[str, tuple[str, str] | None]:
    """(positive, negative) per negative type for one scenes.json image, None where the scene allows none."""
    objects, groups = image["objects"], _scene_groups(image["objects"])
    present_colours = {o["colour"] for o in objects}
    present_shapes = {o["shape"] for o in objects}
    positive = _inventory(groups)
    out: dict[str, tuple[str, str] | None] = {}

    def rng(kind: str) -> np.random.Generator:
        return np.random.default_rng([seed, image["image_id"], 1 + NEGATIVE_TYPES.index(kind)])

    def replaced(index: int, group: _Group) -> tuple[str, str]:
        return positive, _inventory([group if i == index else g for i, g in enumerate(groups)])

    r = rng("colour_replace")
    i = int(r.integers(len(groups)))
    colour = str(r.choice(sorted(set(COLOURS) - present_colours)))
    out["colour_replace"] = replaced(i, _Group(colour, groups[i].shape, groups[i].count, groups[i].size))

    sized = [i for i, g in enumerate(groups) if g.size is not None]
    if sized:
        i = sized[int(rng("size_replace").integers(len(sized)))]
        other = SIZES[1 - SIZES.index(groups[i].size)]
        out["size_replace"] = replaced(i, _Group(groups[i].colour, groups[i].shape, groups[i].count, other))
    else:
        out["size_replace"] = None

    n = len(objects)
    wrong = [m for m in (n - 1, n + 1) if 1 <= m <= len(_COUNT_WORDS)]
    out["count_change"] = (_how_many(n), _how_many(wrong[int(rng("count_change").integers(len(wrong)))]))

    r = rng("object_replace")
    i = int(r.integers(len(groups)))
    shape = str(r.choice([s for s in SHAPES if s not in present_shapes]))
    out["object_replace"] = replaced(i, _Group(groups[i].colour, shape, groups[i].count, groups[i].size))

    out["attribute_swap"] = _attribute_swap(groups, positive, rng("attribute_swap"))
    out["relation_swap"] = _relation_swap(image, objects, groups, rng("relation_swap"))
    return {kind: out[kind] for kind in NEGATIVE_TYPES}


def _attribute_swap(groups: list[_Group], positive: str, r: np.random.Generator) -> tuple[str, str] | None:
    """Two groups of different shapes and colours trade colours, when neither swapped colour-shape is in the
    scene (so both swapped descriptions are false and no colour-shape is named twice); failing that, two groups
    of different shapes trade sizes (false: no object of either group has the other size)."""
    present = {(g.colour, g.shape) for g in groups}
    pairs = [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups)) if groups[i].shape != groups[j].shape]
    colour_swaps, size_swaps = [], []
    for i, j in pairs:
        a, b = groups[i], groups[j]
        if a.colour != b.colour and (b.colour, a.shape) not in present and (a.colour, b.shape) not in present:
            colour_swaps.append((i, j, _Group(b.colour, a.shape, a.count, a.size), _Group(a.colour, b.shape, b.count, b.size)))
        if a.size and b.size and a.size != b.size:
            size_swaps.append((i, j, _Group(a.colour, a.shape, a.count, b.size), _Group(b.colour, b.shape, b.count, a.size)))
    options = colour_swaps or size_swaps
    if not options:
        return None
    i, j, new_a, new_b = options[int(r.integers(len(options)))]
    swapped = [new_a if k == i else new_b if k == j else g for k, g in enumerate(groups)]
    return positive, _inventory(swapped)


def _relation_swap(image: dict, objects: list[dict], groups: list[_Group], r: np.random.Generator) -> tuple[str, str] | None:
    """'A <relation> B' for two objects each alone in its colour-shape group, along the axis where their
    centres differ most (by more than the margin); the negative names the opposite relation."""
    alone = {(g.colour, g.shape): g for g in groups if g.count == 1}
    singles = [o for o in objects if (o["colour"], o["shape"]) in alone]
    options = []
    for a in singles:
        for b in singles:
            if a is b:
                continue
            (ax, ay), (bx, by) = _centre(a), _centre(b)
            dx, dy = (bx - ax) / image["width"], (by - ay) / image["height"]
            if abs(dx) >= abs(dy):
                relation = "to the left of" if dx > 0 else "to the right of"
            else:
                relation = "above" if dy > 0 else "below"
            if max(abs(dx), abs(dy)) > RELATION_MARGIN:
                options.append((a, relation, b))
    if not options:
        return None
    a, relation, b = options[int(r.integers(len(options)))]
    na, nb = alone[(a["colour"], a["shape"])].phrase(), alone[(b["colour"], b["shape"])].phrase()
    return f"{na} {relation} {nb}", f"{na} {_RELATIONS[relation]} {nb}"


def _centre(obj: dict) -> tuple[float, float]:
    x, y, w, h = obj["bbox"]
    return x + w / 2, y + h / 2


# -------------------------------------------------------------------------------------------- checker


class CaptionGrammarError(ValueError):
    """The caption is not a sentence of the hard-negative grammar (unknown word, agreement, joining)."""


@dataclass(frozen=True)
class NounPhrase:
    count: int
    size: str | None
    colour: str
    shape: str


@dataclass(frozen=True)
class ObjectCount:
    count: int


@dataclass(frozen=True)
class Relation:
    subject: NounPhrase
    relation: str
    object: NounPhrase


_NP = re.compile(
    r"(?P<count>a|two|three|four) (?:(?P<size>{sizes}) )?(?P<colour>{colours}) (?P<noun>[a-z]+)".format(
        sizes="|".join(SIZES), colours="|".join(COLOURS)
    )
)
_COUNTS = {"a": 1, "two": 2, "three": 3, "four": 4}
_HOW_MANY = re.compile(r"(?P<count>one|two|three|four) (?P<noun>shapes?)")
_SINGULAR = {s: s for s in SHAPES}
_PLURAL = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}  # circles, squares, ..., crosses


def _parse_noun_phrase(text: str) -> NounPhrase:
    m = _NP.fullmatch(text)
    if m is None:
        raise CaptionGrammarError(f"not a noun phrase: {text!r}")
    count, noun = _COUNTS[m["count"]], m["noun"]
    nouns = _SINGULAR if count == 1 else _PLURAL
    if noun not in nouns:
        raise CaptionGrammarError(f"{noun!r} is not a {'singular' if count == 1 else 'plural'} shape noun in {text!r}")
    return NounPhrase(count, m["size"], m["colour"], nouns[noun])


def parse_caption(text: str) -> list[NounPhrase] | Relation | ObjectCount:
    """A caption of the grammar: 'NP', 'NP and NP', 'NP, NP and NP', ...; 'NP REL NP' with singular NPs; or
    'N shape(s)' (the number of objects, N from one to four)."""
    if not text or text != text.strip() or "  " in text:
        raise CaptionGrammarError(f"stray spaces in {text!r}")
    how_many = _HOW_MANY.fullmatch(text)
    if how_many:
        count = {"one": 1, "two": 2, "three": 3, "four": 4}[how_many["count"]]
        if (count == 1) != (how_many["noun"] == "shape"):
            raise CaptionGrammarError(f"number and noun disagree in {text!r}")
        return ObjectCount(count)
    for relation in _RELATIONS:
        head, sep, tail = text.partition(f" {relation} ")
        if sep:
            subject, obj = _parse_noun_phrase(head), _parse_noun_phrase(tail)
            if subject.count != 1 or obj.count != 1:
                raise CaptionGrammarError(f"a relation joins two single objects: {text!r}")
            return Relation(subject, relation, obj)
    head, sep, last = text.rpartition(" and ")
    parts = [*head.split(", "), last] if sep else [text]
    phrases = [_parse_noun_phrase(p) for p in parts]
    if len({(p.colour, p.shape) for p in phrases}) != len(phrases):
        raise CaptionGrammarError(f"a colour and shape is named twice in {text!r}")
    return phrases


def _fits(obj: dict, np_: NounPhrase) -> bool:
    return obj["colour"] == np_.colour and obj["shape"] == np_.shape and (np_.size is None or obj["size"] == np_.size)


def _phrase_holds(objects: list[dict], np_: NounPhrase, reading: str) -> bool:
    if reading == "exact":  # exactly `count` objects of this colour and shape, all of the stated size
        same_kind = [o for o in objects if o["colour"] == np_.colour and o["shape"] == np_.shape]
        return len(same_kind) == np_.count and all(_fits(o, np_) for o in same_kind)
    return sum(_fits(o, np_) for o in objects) >= np_.count


def _relation_between(a: dict, b: dict, relation: str, width: int, height: int) -> bool:
    ax, ay = a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2
    bx, by = b["bbox"][0] + b["bbox"][2] / 2, b["bbox"][1] + b["bbox"][3] / 2
    return {
        "to the left of": bx - ax > RELATION_MARGIN * width,
        "to the right of": ax - bx > RELATION_MARGIN * width,
        "above": by - ay > RELATION_MARGIN * height,
        "below": ay - by > RELATION_MARGIN * height,
    }[relation]


def caption_holds(text: str, image: dict, reading: str = "exact") -> bool:
    """Whether caption `text` is true of scenes.json image `image` under `reading` ("exact" or "at-least")."""
    if reading not in ("exact", "at-least"):
        raise ValueError(reading)
    parsed, objects = parse_caption(text), image["objects"]
    if isinstance(parsed, ObjectCount):
        return len(objects) == parsed.count if reading == "exact" else len(objects) >= parsed.count
    if isinstance(parsed, list):
        return all(_phrase_holds(objects, p, reading) for p in parsed)
    if reading == "exact" and not (
        _phrase_holds(objects, parsed.subject, reading) and _phrase_holds(objects, parsed.object, reading)
    ):
        return False
    return any(
        _relation_between(a, b, parsed.relation, image["width"], image["height"])
        for a in objects
        if _fits(a, parsed.subject)
        for b in objects
        if _fits(b, parsed.object) and b is not a
    )

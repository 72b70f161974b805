"""Property test: random mutations of valid COCO, Karpathy, task-card, checkpoint-card and result-record files, fed to
their readers.

Hypothesis edits one place of a valid file (replaces a value with any JSON value, NaN and ../ paths included,
deletes a key, duplicates a list entry, adds a key, or truncates the text) and the reader must either read it
(every item too) or raise the one-line SparcEvalError. Any other exception, or a message of several lines, fails
and is shrunk to the smallest mutation that shows it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from record_factory import write_run

from sparc_eval.errors import SparcEvalError

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["../x", "/etc/passwd", "a.png", "b.png", "", "val", "test", "r"])
)
VALUES = st.recursive(
    LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6
)


def _children(node: Any) -> list:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


@st.composite
def mutated(draw, document: Any) -> tuple[Any, bool]:
    """(a copy of `document` with one random edit, whether to truncate its serialised text instead)."""
    doc = copy.deepcopy(document)
    if draw(st.integers(0, 9)) == 0:
        return doc, True
    parent, key = None, None
    node = doc
    while _children(node) and draw(st.booleans()):
        parent, key = node, draw(st.sampled_from(_children(node)))
        node = node[key]
    op = draw(st.sampled_from(["replace", "delete", "duplicate", "add"]))
    if op == "replace" or parent is None:
        if parent is None:
            return draw(VALUES), False
        parent[key] = draw(VALUES)
    elif op == "delete":
        del parent[key]
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    elif isinstance(node, dict):
        node[draw(st.text(max_size=6))] = draw(VALUES)
    else:
        parent[key] = draw(VALUES)
    return doc, False


def write(path: Path, doc: Any, truncate: bool, draw_cut: int, as_yaml: bool = False) -> None:
    text = yaml.safe_dump(doc) if as_yaml else json.dumps(doc)
    if truncate:
        text = text[: draw_cut % max(1, len(text))]
    path.write_text(text, encoding="utf-8")


def read_or_one_line_error(read) -> None:
    """The only acceptable outcomes: a clean read, or a SparcEvalError of one line."""
    try:
        read()
    except SparcEvalError as exc:
        assert "\n" not in str(exc) and str(exc).strip(), repr(str(exc))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("property")
    (root / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16), (10, 200, 30)).save(root / "images" / name)
    return root


COCO = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 16, "height": 16},
        {"id": 2, "file_name": "b.png", "width": 16, "height": 16},
    ],
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6], "area": 36, "iscrowd": 0},
        {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 16, 16], "area": 256, "iscrowd": 0},
    ],
}
KARPATHY = {
    "images": [
        {"filepath": "images", "filename": n, "imgid": i, "cocoid": i, "split": "test", "sentences": [{"raw": "a red circle"}]}
        for i, n in ((1, "a.png"), (2, "b.png"))
    ]
}


def _read_all(dataset) -> None:
    for i in range(len(dataset)):
        dataset[i]


@SETTINGS
@given(change=mutated(COCO), cut=st.integers(0, 10**6))
def test_coco_instances_reader(folder, change, cut):
    from sparc_eval.data.registry import open_dataset

    doc, truncate = change
    write(folder / "instances.json", doc, truncate, cut)
    read_or_one_line_error(
        lambda: _read_all(open_dataset("coco-instances", folder / "images", "val", annotation=str(folder / "instances.json")))
    )


@SETTINGS
@given(change=mutated(COCO), cut=st.integers(0, 10**6))
def test_coco_captions_reader(folder, change, cut):
    from sparc_eval.data.registry import open_dataset

    doc, truncate = change
    if isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
        for ann in doc["annotations"]:
            if isinstance(ann, dict) and "bbox" in ann:
                ann["caption"] = "a red circle"
    write(folder / "captions.json", doc, truncate, cut)
    read_or_one_line_error(
        lambda: _read_all(open_dataset("coco-captions", folder / "images", "val", annotation=str(folder / "captions.json")))
    )


@pytest.mark.parametrize(
    "fmt, key, value, message",
    [
        ("coco-captions", "image_id", [], r"annotation 10 refers to image id \[\], which is not listed"),
        ("coco-instances", "image_id", [], r"annotation 10 refers to image id \[\], which is not listed"),
        ("coco-instances", "category_id", {"a": 1}, r"annotation 10 has category_id \{'a': 1\}, outside the listed"),
    ],
)
def test_coco_reference_that_is_no_id_is_one_line(folder, fmt, key, value, message):
    """Found by the property test: an unhashable image_id once raised TypeError instead of naming the entry."""
    from sparc_eval.data.registry import open_dataset

    doc = copy.deepcopy(COCO)
    doc["annotations"][0].update({key: value, "caption": "a red circle"})
    (folder / "unhashable.json").write_text(json.dumps(doc))
    with pytest.raises(SparcEvalError, match=r"unhashable.json: " + message):
        open_dataset(fmt, folder / "images", "val", annotation=str(folder / "unhashable.json"))


@SETTINGS
@given(change=mutated(KARPATHY), cut=st.integers(0, 10**6))
def test_karpathy_reader(folder, change, cut):
    from sparc_eval.data.registry import open_dataset

    doc, truncate = change
    write(folder / "karpathy.json", doc, truncate, cut)
    read_or_one_line_error(lambda: _read_all(open_dataset("karpathy", folder, "test", annotation=str(folder / "karpathy.json"))))


CARD = yaml.safe_load((Path(__file__).resolve().parents[1] / "tasks" / "synth-cls.yaml").read_text())


@SETTINGS
@given(change=mutated(CARD), cut=st.integers(0, 10**6))
def test_task_card_reader(folder, change, cut):
    from sparc_eval.tasks.card import load_card

    doc, truncate = change
    write(folder / "card.yaml", doc, truncate, cut, as_yaml=True)
    read_or_one_line_error(lambda: load_card(str(folder / "card.yaml")))


CHECKPOINT_CARD = yaml.safe_load((Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-sparc.yaml").read_text())


@SETTINGS
@given(change=mutated(CHECKPOINT_CARD), cut=st.integers(0, 10**6))
def test_checkpoint_card_reader(folder, change, cut):
    from sparc_eval.checkpoint_cards import load_checkpoint_card

    doc, truncate = change
    write(folder / "ckpt-card.yaml", doc, truncate, cut, as_yaml=True)
    read_or_one_line_error(lambda: load_checkpoint_card(str(folder / "ckpt-card.yaml")))


@pytest.fixture(scope="module")
def valid_record(tmp_path_factory) -> tuple[Path, dict]:
    path = write_run(tmp_path_factory.mktemp("records"), ckpt="tiny", task="synth-cls", metrics={"top1": 0.5})
    return path, json.loads(path.read_text())


@SETTINGS
@given(data=st.data(), cut=st.integers(0, 10**6))
def test_result_record_reader(valid_record, data, cut):
    from sparc_eval.results.record import load_record, load_samples

    path, raw = valid_record
    doc, truncate = data.draw(mutated(raw))
    write(path, doc, truncate, cut)

    def read() -> None:
        load_samples(path, load_record(path))

    read_or_one_line_error(read)

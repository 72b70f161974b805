"""`sparc-eval kprecision`: scores a COCO results file; bad input is one line and exit code 2."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, run_cli

REFS = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}],
    "annotations": [
        {"id": 10, "image_id": 1, "caption": "A red circle."},
        {"id": 11, "image_id": 1, "caption": "a blue square"},
        {"id": 20, "image_id": 2, "caption": "two green stars"},
        {"id": 30, "image_id": 3, "caption": "a yellow cross"},
    ],
}


@pytest.fixture
def refs_file(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(REFS))
    return path


def _write(tmp_path, obj, name="preds.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_scores_hand_worked_predictions(tmp_path, refs_file):
    # image 1: "red circle blue square" -> joined 4/4, max over captions 2/4; image 2: "two red stars" -> 2/3
    preds = _write(tmp_path, [{"image_id": 1, "caption": "red circle blue square"}, {"image_id": 2, "caption": "two red stars"}])
    joined = run_cli("kprecision", "--pred", preds, "--refs", refs_file, "--json")
    assert joined.code == 0, joined.stderr
    out = json.loads(joined.stdout)
    assert out["kp"] == pytest.approx(100 * (1.0 + 2 / 3) / 2)
    assert (out["n"], out["n_reference_images"]) == (2, 3)
    best = json.loads(run_cli("kprecision", "--pred", preds, "--refs", refs_file, "--max-over-captions", "--json").stdout)
    assert best["kp"] == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert "max over" in best["info"]["references"]
    table = run_cli("kprecision", "--pred", preds, "--refs", refs_file)
    assert table.code == 0 and "kp" in table.stdout and "83.33" in table.stdout


@pytest.mark.parametrize(
    "content, needle",
    [
        ('[{"image_id": 1, ', "is not valid JSON"),
        ({"image_id": 1, "caption": "x"}, "non-empty JSON list"),
        ([], "non-empty JSON list"),
        ([{"image_id": 1}], "item 0 is not an object"),
        ([{"image_id": 1.5, "caption": "x"}], "item 0 is not an object"),
        ([{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}], "more than one caption for image_id 1"),
        ([{"image_id": 1, "caption": "x"}, {"image_id": 99, "caption": "y"}], "image_id 99 of"),
    ],
)
def test_bad_predictions_are_one_line_errors(tmp_path, refs_file, content, needle):
    preds = _write(tmp_path, content)
    assert_one_line_error(run_cli("kprecision", "--pred", preds, "--refs", refs_file), needle, "preds.json")


def test_missing_and_bad_reference_files(tmp_path, refs_file):
    preds = _write(tmp_path, [{"image_id": 1, "caption": "x"}])
    assert_one_line_error(
        run_cli("kprecision", "--pred", tmp_path / "nope.json", "--refs", refs_file), "nope.json", "does not exist"
    )
    assert_one_line_error(run_cli("kprecision", "--pred", preds, "--refs", tmp_path / "gone.json"), "gone.json", "does not exist")
    not_coco = _write(tmp_path, [{"image_id": 1, "caption": "x"}], "refs.json")
    assert_one_line_error(run_cli("kprecision", "--pred", preds, "--refs", not_coco), "refs.json", "not a COCO captions file")


def test_help_has_an_example():
    result = run_cli("kprecision", "--help")
    assert result.code == 0 and "Example:" in result.stdout

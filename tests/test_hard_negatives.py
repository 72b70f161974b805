"""The hard_negatives runner and the sugarcrepe reader: a hand-worked case, a brute-force scorer, both cards end to
end, SugarCrepe's released layout with bad inputs, and the regression gate's McNemar test on its records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from colour_fakes import ColourModel, run_runner, solid
from conftest import assert_one_line_error, run_cli
from record_factory import write_run
from scipy.stats import binomtest

from sparc_eval.data.sugarcrepe import SUGARCREPE_TYPES, read_sugarcrepe
from sparc_eval.data.synth_negatives import NEGATIVE_TYPES
from sparc_eval.errors import SparcEvalError
from sparc_eval.evaluation import run_evaluation
from sparc_eval.models.loaders import load_model
from sparc_eval.results.record import load_samples
from sparc_eval.results.regress import compare_results
from sparc_eval.tasks.card import load_card
from sparc_eval.tasks.hard_negatives import HardNegativesRunner

COCO_IMAGES = {1: "red", 2: "green", 3: "blue"}


def coco_name(n: int) -> str:
    return f"{n:012d}.jpg"


def write_sugarcrepe(data_dir: Path, tables: dict[str, dict[str, dict]], images: dict[int, str] = COCO_IMAGES) -> Path:
    """SugarCrepe's released layout under a --data-dir: sugar-crepe/data/<type>.json (indented objects keyed by
    "0", "1", ... with filename / caption / negative_caption) and the COCO val2017 images they name."""
    (data_dir / "coco" / "val2017").mkdir(parents=True, exist_ok=True)
    for n, colour in images.items():
        solid(colour, 16).save(data_dir / "coco" / "val2017" / coco_name(n), quality=95)
    folder = data_dir / "sugar-crepe" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, table in tables.items():
        (folder / f"{kind}.json").write_text(json.dumps(table, indent=4))
    return data_dir


def entry(n: int, caption: str, negative) -> dict:
    return {"filename": coco_name(n), "caption": caption, "negative_caption": negative}


# Hand-worked with ColourModel (a text embeds as its first colour word, an image as its mean colour):
HAND_TABLES = {
    "swap_att": {
        "0": entry(1, "a red cup on a table", "a blue cup on a table"),  # red image: right
        "1": entry(2, "a blue cup", "a green cup"),  # green image, the positive names the wrong colour: wrong
        "2": entry(3, "a blue cup on a red mat", "a blue mat on a red cup"),  # both embed as blue: a tie, wrong
    },
    "replace_obj": {
        "0": entry(1, "a red car", ["a green car", "a blue car"]),  # two negatives: right, chance 1/3
        "1": entry(2, "green grass", "red grass"),  # right
    },
}
HAND_METRICS = {
    "acc_swap_att": 1 / 3,
    "chance_swap_att": 1 / 2,
    "acc_replace_obj": 1.0,
    "chance_replace_obj": (1 / 3 + 1 / 2) / 2,
    "acc_mean": (1 / 3 + 1) / 2,
    "chance_mean": (1 / 2 + 5 / 12) / 2,
}


def hand_card(types=("swap_att", "replace_obj")) -> dict:
    return {
        "name": "hand-sugarcrepe",
        "version": 1,
        "runner": "hard_negatives",
        "dataset": {
            "format": "sugarcrepe",
            "root": "{data}",
            "split": "test",
            "annotations": "sugar-crepe/data",
            "images": "coco/val2017",
            "types": list(types),
        },
    }


def test_hand_worked_case(tmp_path):
    write_sugarcrepe(tmp_path, HAND_TABLES)
    output, _, _ = run_runner(tmp_path, hand_card(), ColourModel(), batch_size=2)
    for name, value in HAND_METRICS.items():
        assert output.metrics[name] == pytest.approx(value, abs=1e-12), name
    assert all(output.metrics[f"acc_{t}"] is None for t in (*NEGATIVE_TYPES, "add_att"))
    assert output.n_samples == 5 and output.info["n_images"] == 3 and output.info["n_ties"] == 1
    by_id = {s["id"]: s for s in output.samples}
    assert [s["id"] for s in output.samples] == ["swap_att/0", "replace_obj/0", "swap_att/1", "replace_obj/1", "swap_att/2"]
    assert [by_id[f"swap_att/{k}"]["correct"] for k in "012"] == [1, 0, 0]
    assert by_id["swap_att/2"]["positive_score"] == by_id["swap_att/2"]["negative_scores"][0]  # the tie
    assert by_id["replace_obj/0"]["n_candidates"] == 3 and by_id["replace_obj/0"]["acc_replace_obj"] == 1
    assert by_id["swap_att/0"]["positive_score"] == pytest.approx(1.0, abs=1e-3)  # red JPEG vs "red"


def test_aggregate_is_a_mean_over_types_and_none_when_empty():
    rows = [{"type": "swap_att", "correct": c, "n_candidates": 2} for c in (1, 1, 1, 0)]
    rows.append({"type": "add_obj", "correct": 0, "n_candidates": 4})
    metrics = HardNegativesRunner.aggregate(rows, None)
    assert metrics["acc_swap_att"] == 0.75 and metrics["acc_add_obj"] == 0.0 and metrics["acc_mean"] == 0.375
    assert metrics["chance_add_obj"] == 0.25 and metrics["chance_mean"] == 0.375
    assert metrics["acc_replace_rel"] is None
    assert all(v is None for v in HardNegativesRunner.aggregate([], None).values())


@torch.inference_mode()
def brute_force(model, samples: list[dict]) -> tuple[list[list[float]], dict[str, float]]:
    """Every entry scored on its own: one image, each caption alone, cosine in float64, plain loops."""
    from PIL import Image

    scores, per_type = [], {}
    for s in samples:
        image = model.encode_image(model.preprocess(Image.open(s["image"]).convert("RGB"))[None])[0].double()
        image = image / image.norm()
        row = []
        for text in [s["positive"], *s["negatives"]]:
            t = model.encode_text(model.tokenize([text]))[0].double()
            row.append(float(image @ (t / t.norm())))
        scores.append(row)
        per_type.setdefault(s["type"], []).append(all(row[0] > x for x in row[1:]))
    accs = {f"acc_{t}": sum(v) / len(v) for t, v in per_type.items()}
    accs["acc_mean"] = sum(accs.values()) / len(per_type)
    return scores, accs


def test_synth_binding_matches_a_brute_force_scorer(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    evaluation = run_evaluation(
        str(tiny_sparc_ckpt), "synth-binding", out=tmp_path / "out", data_dir=synth_data_dir, limit=6, batch_size=4
    )
    record = evaluation.record
    samples = load_samples(evaluation.path, record)
    assert record.task["family"] == "fine-grained understanding"
    assert {"colour_replace", "count_change", "object_replace"} <= {s["type"] for s in samples} and len(samples) >= 18
    scores, accs = brute_force(load_model(str(tiny_sparc_ckpt)), samples)
    for s, row in zip(samples, scores):
        assert [s["positive_score"], *s["negative_scores"]] == pytest.approx(row, abs=1e-5)
    for name, value in accs.items():
        assert record.metrics[name].value == pytest.approx(value, abs=1e-12), name
    for t in NEGATIVE_TYPES:
        if any(s["type"] == t for s in samples):
            assert record.metrics[f"chance_{t}"].value == 0.5
    assert not any(f"acc_{t}" in record.metrics for t in SUGARCREPE_TYPES)  # the card's types only


def test_both_cards_run_from_the_cli(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    out = tmp_path / "results"
    result = run_cli(
        "run", "--task", "synth-binding", "--ckpt", tiny_sparc_ckpt, "--data-dir", synth_data_dir, "--out", out, "--limit", "4"
    )
    assert result.code == 0, result.stderr
    assert "acc_mean" in result.stdout and "acc_relation_swap" in result.stdout

    data = write_sugarcrepe(
        tmp_path / "data",
        {
            kind: {str(k): entry(n, f"a {c} thing {k}", f"a {c} other {k}") for k, (n, c) in enumerate(COCO_IMAGES.items())}
            for kind in SUGARCREPE_TYPES
        },
    )
    result = run_cli("run", "--task", "sugarcrepe", "--ckpt", tiny_sparc_ckpt, "--data-dir", data, "--out", out, "--json")
    assert result.code == 0, result.stderr
    record = next(p for p in out.rglob("sugarcrepe-*.record.json"))
    metrics = json.loads(record.read_text())["metrics"]
    assert all(metrics[f"acc_{t}"]["value"] is not None for t in SUGARCREPE_TYPES)
    # A record holds its card's types only: no column that could never have a value.
    assert set(metrics) == {"acc_mean", "chance_mean"} | {f"{k}_{t}" for t in SUGARCREPE_TYPES for k in ("acc", "chance")}
    binding = json.loads(next(out.rglob("synth-binding-*.record.json")).read_text())["metrics"]
    assert set(binding) == {"acc_mean", "chance_mean"} | {f"{k}_{t}" for t in NEGATIVE_TYPES for k in ("acc", "chance")}
    assert all(binding[f"acc_{t}"]["value"] is not None for t in NEGATIVE_TYPES)
    assert metrics["chance_mean"]["higher_is_better"] is None and metrics["acc_mean"]["higher_is_better"] is True


BAD_TABLES = {
    "missing key": ({"7": {"filename": coco_name(1), "caption": "a red cup"}}, ["swap_att.json", "'7'", "negative_caption"]),
    "missing image": (
        {"0": entry(1, "a red cup", "a blue cup"), "3": entry(9, "a red cup", "a blue cup")},
        ["swap_att.json", "'3'", coco_name(9)],
    ),
    "empty negative": ({"5": entry(1, "a red cup", "  ")}, ["swap_att.json", "'5'", "negative_caption"]),
    "empty negative list": ({"5": entry(1, "a red cup", [])}, ["swap_att.json", "'5'", "negative_caption"]),
    "empty positive": ({"2": entry(1, "", "a blue cup")}, ["swap_att.json", "'2'", "caption"]),
    "image outside": (
        {"4": {**entry(1, "a red cup", "a blue cup"), "filename": "../../../etc/passwd"}},
        ["swap_att.json", "'4'", "outside"],
    ),
    "not an object": (["not", "an", "object"], ["swap_att.json", "object keyed by entry id"]),
}


def _data_with_bad_swap_att(data_dir: Path, table) -> Path:
    data = write_sugarcrepe(data_dir, {kind: {"0": entry(2, "a green cup", "a red cup")} for kind in SUGARCREPE_TYPES})
    (data / "sugar-crepe" / "data" / "swap_att.json").write_text(json.dumps(table))
    return data


@pytest.mark.parametrize("case", ["missing key", "missing image", "empty negative"])
def test_bad_sugarcrepe_input_is_one_line_naming_file_and_entry(case, tiny_sparc_ckpt, tmp_path):
    table, needles = BAD_TABLES[case]
    data = _data_with_bad_swap_att(tmp_path / "data", table)
    out = tmp_path / "results"
    result = run_cli("run", "--task", "sugarcrepe", "--ckpt", tiny_sparc_ckpt, "--data-dir", data, "--out", out)
    assert_one_line_error(result, *needles)
    assert not out.exists() or not list(out.rglob("*.record.json"))


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_reader_names_file_and_entry(case, tmp_path):
    table, needles = BAD_TABLES[case]
    data = _data_with_bad_swap_att(tmp_path, table)
    with pytest.raises(SparcEvalError) as caught:
        read_sugarcrepe(data, "test", annotations="sugar-crepe/data", images="coco/val2017")
    assert all(needle in str(caught.value) for needle in needles), str(caught.value)


def test_reader_layout_errors(tmp_path):
    data = write_sugarcrepe(tmp_path, HAND_TABLES)
    root = data
    with pytest.raises(SparcEvalError, match=r"replace_att\.json does not exist"):
        read_sugarcrepe(root, "test", annotations="sugar-crepe/data", images="coco/val2017")
    with pytest.raises(SparcEvalError, match="image folder"):
        read_sugarcrepe(root, "test", annotations="sugar-crepe/data", images="coco/train2017", types=("swap_att",))
    with pytest.raises(SparcEvalError, match="leads outside"):
        read_sugarcrepe(root, "test", annotations="sugar-crepe/data", images="coco/val2017", types=("../../swap_att",))
    with pytest.raises(SparcEvalError, match="distinct"):
        read_sugarcrepe(root, "test", annotations="sugar-crepe/data", images="coco/val2017", types=("swap_att", "swap_att"))
    (data / "sugar-crepe" / "data" / "add_att.json").write_text("{}")
    with pytest.raises(SparcEvalError, match="holds no entries"):
        read_sugarcrepe(root, "test", annotations="sugar-crepe/data", images="coco/val2017", types=("add_att",))
    dataset = read_sugarcrepe(
        root, "test", annotations="sugar-crepe/data", images="coco/val2017", types=("replace_obj", "swap_att")
    )
    assert [p.name for p in dataset.paths] == [coco_name(1), coco_name(2), coco_name(3)]  # order of first appearance
    assert [e["id"] for e in dataset.entries[0]] == ["replace_obj/0", "swap_att/0"]
    assert dataset.entries[0][0]["negatives"] == ["a green car", "a blue car"]


def test_unknown_type_is_refused_when_the_card_loads(tmp_path):
    card = hand_card(types=("swap_att", "swap_rel"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(SparcEvalError, match="'swap_rel' has no metric"):
        load_card(path)


class _RolledColours(ColourModel):
    """ColourModel that sees red as green, green as blue and blue as red: wrong on every coloured entry."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return super().encode_image(images.roll(1, dims=1))


def test_regress_runs_mcnemar_on_each_type(tmp_path):
    """Two records of the same checkpoint and card: every acc_<type> that dropped is tested with the exact McNemar
    test on the paired per-sample outcomes, acc_mean with the paired bootstrap, chance is not gated."""
    tables = {
        "swap_att": {str(k): entry(1 + k % 3, f"a {COCO_IMAGES[1 + k % 3]} cup", "a grey cup") for k in range(12)},
        "replace_obj": {str(k): entry(1 + k % 3, f"a {COCO_IMAGES[1 + k % 3]} car", "a white car") for k in range(9)},
    }
    write_sugarcrepe(tmp_path, tables)
    before, _, _ = run_runner(tmp_path, hand_card(), ColourModel())
    after, _, _ = run_runner(tmp_path, hand_card(), _RolledColours())
    assert before.metrics["acc_swap_att"] == 1.0 and after.metrics["acc_swap_att"] < 1.0
    for folder, output in (("base", before), ("new", after)):
        write_run(
            tmp_path / folder,
            ckpt="m",
            task="hand-sugarcrepe",
            runner="hard_negatives",
            metrics=output.metrics,
            samples=output.samples,
        )
    report = compare_results(tmp_path / "base", tmp_path / "new", n_bootstrap=200)
    tests = {m.metric: m for m in report.metrics}
    for kind in ("swap_att", "replace_obj"):
        m = tests[f"acc_{kind}"]
        assert m.test == "McNemar"
        base = np.array([s["correct"] for s in before.samples if s["type"] == kind], bool)
        new = np.array([s["correct"] for s in after.samples if s["type"] == kind], bool)
        lost, gained = int((base & ~new).sum()), int((~base & new).sum())
        assert m.p_value == pytest.approx(binomtest(lost, lost + gained, 0.5).pvalue)
    assert tests["acc_mean"].test == "bootstrap" and tests["acc_mean"].status == "REGRESSION"
    assert tests["chance_mean"].test == "-" and "descriptive" in tests["chance_mean"].note

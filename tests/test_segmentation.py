"""The segmentation runner.

- Oracle runs of the shipped voc-seg / voc21-seg / context-seg cards (via `data_dir`) on hand-written
  VOCdevkit and Pascal Context (mmseg layout) fixtures, with a fake model that sees colour: every region
  is painted in its class's colour, so the predictions and every metric are worked out by hand below.
- A real run (`sparc-eval run --task synth-seg` with a tiny SPARC checkpoint): record, aggregate, and
  mmseg's IoUMetric on the runner's own predictions.
- Bad input: one line, exit code 2, nothing written.
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CliResult, assert_one_line_error
from PIL import Image

from sparc_eval.data.voc import CONTEXT59_CLASSES, VOC_CLASSES
from sparc_eval.tasks.card import load_card, validate_params
from sparc_eval.tasks.runner import RunContext
from sparc_eval.tasks.segmentation import SegmentationRunner, Windows, slide_boxes, stitch

GREY = (128, 128, 128)
# The fake model knows these names' colours; "airplane" is the second synonym of voc20.txt's "aeroplane, airplane".
PALETTE = {"airplane": (220, 30, 30), "cat": (30, 30, 220), "bus": (30, 200, 30), "sky": (40, 90, 230), "grass": (40, 190, 40)}
RED, BLUE, GREEN = PALETTE["airplane"], PALETTE["cat"], PALETTE["bus"]


class PaletteModel(torch.nn.Module):
    """A contract model that sees colour, 8x8 patches of a 64 px input.

    Patch embedding: the patch's mean RGB centred on mid-grey, plus a small constant 4th component. Text
    embedding: the centred colour of the PALETTE name the prompt holds as a whole word, with the same 4th
    component; any other name embeds as (0, 0, 0, 1). So a patch of a palette colour matches that name with
    cosine 1, and a grey patch matches every unknown name equally (~1), never one class in particular.
    """

    FOURTH = 0.05

    def __init__(self):
        super().__init__()
        self.names = sorted(PALETTE, key=len, reverse=True)
        self.register_buffer("_scale", torch.tensor(100.0))

    @staticmethod
    def preprocess(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32) / 255).permute(2, 0, 1)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = [next((k + 1 for k, n in enumerate(self.names) if re.search(rf"\b{n}\b", t)), 0) for t in texts]
        return torch.tensor(ids)[:, None]

    def _colour(self, rgb: torch.Tensor) -> torch.Tensor:
        return torch.cat([rgb - 0.5, torch.full_like(rgb[..., :1], self.FOURTH)], dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        table = torch.cat(
            [
                torch.tensor([[0.0, 0.0, 0.0, 1.0]]),
                self._colour(torch.tensor([PALETTE[n] for n in self.names], dtype=torch.float32) / 255),
            ]
        )
        return F.normalize(table[tokens[:, 0]], dim=-1)

    def encode_image_dense(self, images: torch.Tensor, head: str = "global"):
        patches = F.avg_pool2d(images, 8)  # [B, 3, 8, 8]
        return self._colour(patches.flatten(2).transpose(1, 2)), (8, 8)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_image_dense(images)[0].mean(1), dim=-1)

    def encode_text_dense(self, tokens: torch.Tensor):
        return self.encode_text(tokens)[:, None], torch.ones(len(tokens), 1, dtype=torch.bool)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._scale

    def describe(self) -> dict:
        path = "centred mean RGB of each 8x8 patch"
        return {
            "source": "test",
            "arch": "palette",
            "ref": "palette",
            "sha256": "0" * 64,
            "objective": None,
            "dense_heads": {"global": path, "local": path},
        }


# ------------------------------------------------------------------------------ fixtures in the real layouts


def _save_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=95, subsampling=0)


def _save_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def _halves(h: int, w: int, first, second, vertical: bool) -> np.ndarray:
    """An [h, w] (or [h, w, 3]) array: `first` in the left (vertical=True) or top half, `second` in the other."""
    a = np.empty((h, w, *np.shape(first)), dtype=np.int64)
    if vertical:
        a[:, : w // 2], a[:, w // 2 :] = first, second
    else:
        a[: h // 2], a[h // 2 :] = first, second
    return a


def write_voc_fixture(data_dir: Path) -> Path:
    """data_dir/VOCdevkit/VOC2012 with four val images (labels: VOC indices, 255 = ignore):
    a: left red airplane(1) | right blue cat(8);  b: grey background(0), top row 255;
    c: portrait, top green bus(6) / bottom red airplane(1);  d: all red, left labelled airplane(1) | right cat(8)."""
    root = data_dir / "VOCdevkit" / "VOC2012"
    air, cat, bus = VOC_CLASSES.index("aeroplane"), VOC_CLASSES.index("cat"), VOC_CLASSES.index("bus")
    grey_label = np.zeros((32, 64))
    grey_label[0] = 255
    images = {
        "a": (_halves(32, 64, RED, BLUE, True), _halves(32, 64, air, cat, True)),
        "b": (np.full((32, 64, 3), GREY), grey_label),
        "c": (_halves(64, 32, GREEN, RED, False), _halves(64, 32, bus, air, False)),
        "d": (np.full((32, 64, 3), RED), _halves(32, 64, air, cat, True)),
    }
    for stem, (rgb, label) in images.items():
        _save_image(root / "JPEGImages" / f"{stem}.jpg", rgb)
        _save_label(root / "SegmentationClass" / f"{stem}.png", label)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{s}\n" for s in images))
    return root


def write_context_fixture(data_dir: Path) -> Path:
    """data_dir/VOCdevkit/VOC2010 in mmseg's Pascal Context layout (labels 1..59, 0 = unlabelled):
    e: top sky / bottom grass, row 0 unlabelled;  f: all grass-green, left labelled grass | right tree."""
    root = data_dir / "VOCdevkit" / "VOC2010"
    sky, grass, tree = (CONTEXT59_CLASSES.index(n) + 1 for n in ("sky", "grass", "tree"))
    e_label = _halves(64, 64, sky, grass, False)
    e_label[0] = 0
    images = {
        "e": (_halves(64, 64, PALETTE["sky"], PALETTE["grass"], False), e_label),
        "f": (np.full((64, 64, 3), PALETTE["grass"]), _halves(64, 64, grass, tree, True)),
    }
    for stem, (rgb, label) in images.items():
        _save_image(root / "JPEGImages" / f"{stem}.jpg", rgb)
        _save_label(root / "SegmentationClassContext" / f"{stem}.png", label)
    (root / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (root / "ImageSets" / "SegmentationContext" / "val.txt").write_text("e\nf\n")
    return root


@pytest.fixture(scope="module")
def fixture_data_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("segdata")
    write_voc_fixture(data_dir)
    write_context_fixture(data_dir)
    return data_dir


CARDS = Path(__file__).parents[1] / "tasks"


def derived_card(tmp_path: Path, name: str, **params) -> Path:
    """A copy of shipped card `name` in tmp_path with `params` changed (its class-name file made absolute)."""
    raw = yaml.safe_load((CARDS / f"{name}.yaml").read_text())
    if raw["params"].get("classnames"):
        raw["params"]["classnames"] = str(CARDS / raw["params"]["classnames"])
    raw["params"].update(params)
    path = tmp_path / f"{name}-derived.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def make_ctx(data_dir: Path, work: Path, limit: int | None = None) -> RunContext:
    return RunContext(
        device=torch.device("cpu"),
        batch_size=8,
        precision="fp32",
        limit=limit,
        num_workers=0,
        seed=0,
        data_dir=data_dir,
        work_dir=work,
        record_stem="test",
        cache_dir=work / "cache",
    )


def run_card(name: str, model, data_dir: Path, work: Path):
    card = load_card(name)
    params = validate_params(SegmentationRunner.Params, card.params, card)
    runner = SegmentationRunner(card, params, make_ctx(data_dir, work))
    with torch.inference_mode():
        return runner.evaluate(model), params


# ------------------------------------------------------------------------------ geometry


def test_slide_boxes_follow_mmseg():
    # rows: (5-4+2-1)//2+1 = 2, cols: (7-4+2-1)//2+1 = 3; the last row / column is flush with the edge.
    assert slide_boxes(5, 7, 4, 2) == [(0, 0, 4, 4), (0, 2, 4, 6), (0, 3, 4, 7), (1, 0, 5, 4), (1, 2, 5, 6), (1, 3, 5, 7)]
    assert slide_boxes(3, 3, 4, 2) == [(0, 0, 3, 3)]  # smaller than the crop: one window, the whole image


def test_stitch_averages_overlapping_windows():
    windows = Windows(pixels=torch.empty(0), boxes=[(0, 0, 4, 4), (0, 2, 4, 6)], resized=(4, 6), size=(4, 6))
    scores = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])
    assert stitch(scores, windows)[0].tolist() == [[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]] * 4


# ------------------------------------------------------------------------------ oracle runs of the shipped cards


def test_voc_seg_oracle(fixture_data_dir, tmp_path):
    out, params = run_card("voc-seg", PaletteModel(), fixture_data_dir, tmp_path)
    # Scored (non-background) pixels per class, I / L / P / U (image b is all background: ignored):
    #   aeroplane: a 1024 + c 1024 + d 1024 right of 2048 predicted -> I 3072, L 3072, P 4096, U 4096 -> 3/4
    #   cat: a 1024 right; d's 1024 predicted aeroplane        -> I 1024, L 2048, P 1024, U 2048 -> 1/2
    #   bus: c 1024                                            -> 1
    assert out.metrics["mIoU"] == pytest.approx(100 * (0.75 + 0.5 + 1.0) / 3)
    assert out.metrics["aAcc"] == pytest.approx(100 * 5120 / 6144)
    assert out.metrics["mAcc"] == pytest.approx(100 * (1.0 + 0.5 + 1.0) / 3)
    per_class = out.info["per_class"]
    assert per_class["aeroplane"]["IoU"] == pytest.approx(75.0) and per_class["cat"]["IoU"] == pytest.approx(50.0)
    assert per_class["dog"] == {"IoU": None, "Acc": None} and out.info["n_classes_scored"] == 3
    assert list(per_class) == list(VOC_CLASSES[1:])
    assert out.n_samples == 4 and [s["image_id"] for s in out.samples] == ["a", "b", "c", "d"]
    d = out.samples[3]
    assert d["intersect"][0] == 1024 and d["union"][0] == 2048 and d["label_area"][7] == 1024 and d["union"][7] == 1024
    assert sum(out.samples[1]["label_area"]) == 0
    assert SegmentationRunner.aggregate(out.samples, params) == pytest.approx(out.metrics)
    assert out.info["text_classes"][0] == ["aeroplane", "airplane"] and out.info["head"] == "global"
    assert out.info["windows"] == {"short_side": 336, "crop": 224, "stride": 112, "model_input": [64, 64]}
    confusion = json.loads((tmp_path / out.artifacts["confusion"]).read_text())
    assert confusion["matrix"][7][0] == 1024 and np.sum(confusion["matrix"]) == 6144


def test_voc21_seg_oracle_scores_background_by_threshold(fixture_data_dir, tmp_path):
    out, params = run_card("voc21-seg", PaletteModel(), fixture_data_dir, tmp_path)
    # Grey image b: the 17 unknown names tie, top probability 1/17 < 0.5 -> background on its 1984 scored pixels;
    # pure colours are > 0.99 sure. Background IoU 1, then the voc-seg classes shifted by one.
    assert out.info["per_class"]["background"]["IoU"] == pytest.approx(100.0)
    assert out.metrics["mIoU"] == pytest.approx(100 * (1.0 + 0.75 + 0.5 + 1.0) / 4)
    assert out.metrics["aAcc"] == pytest.approx(100 * (1984 + 5120) / (1984 + 6144))
    assert out.info["n_classes_scored"] == 4 and out.info["background"]["threshold"] == 0.5
    assert SegmentationRunner.aggregate(out.samples, params) == pytest.approx(out.metrics)


def test_context_seg_oracle(fixture_data_dir, tmp_path):
    out, params = run_card("context-seg", PaletteModel(), fixture_data_dir, tmp_path)
    # e: sky rows 1-31 (row 0 unlabelled -> ignored) 1984 px, grass 2048; f: grass 2048 right, tree 2048 predicted grass.
    #   grass I 4096, U 6144 -> 2/3;  sky 1;  tree I 0, U 2048 -> 0.
    assert out.metrics["mIoU"] == pytest.approx(100 * (2 / 3 + 1.0 + 0.0) / 3)
    assert out.metrics["aAcc"] == pytest.approx(100 * (4096 + 1984) / (4096 + 1984 + 2048))
    assert out.info["per_class"]["tree"]["IoU"] == 0.0 and len(out.info["per_class"]) == 59
    assert SegmentationRunner.aggregate(out.samples, params) == pytest.approx(out.metrics)


@pytest.mark.parametrize("cat_line, cat_iou", [("kitty, cat", 50.0), ("cat, kitty", 50.0), ("kitty", 0.0)])
def test_a_class_scores_its_best_synonym(fixture_data_dir, tmp_path, cat_line, cat_iou):
    # The fake model knows "cat" only: a class line holding it anywhere sees the blue regions (IoU 1/2 as in
    # the oracle above); without it they go to one of the names the model does not know.
    names = tmp_path / "names.txt"
    names.write_text("".join((cat_line if n == "cat" else n) + "\n" for n in ["aeroplane, airplane", *VOC_CLASSES[2:]]))
    card = derived_card(tmp_path, "voc-seg", classnames=str(names), templates="simple")
    out, _ = run_card(str(card), PaletteModel(), fixture_data_dir, tmp_path)
    assert out.info["per_class"]["cat"]["IoU"] == pytest.approx(cat_iou)


# ------------------------------------------------------------------------------ a real run, checked against mmseg


@pytest.mark.mm
def test_synth_seg_run_equals_mmseg_on_its_predictions(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    iou_metric = pytest.importorskip("mmseg.evaluation").IoUMetric
    from test_segmentation_metrics import assert_matches_mmseg

    from sparc_eval.models.loaders import load_model
    from sparc_eval.results.record import load_record, load_samples

    out = tmp_path / "results"
    result = cli(
        "run",
        "--task",
        "synth-seg",
        "--ckpt",
        tiny_sparc_ckpt,
        "--data-dir",
        synth_data_dir,
        "--out",
        out,
        "--batch-size",
        "16",
        "--json",
    )
    assert result.code == 0, result.stderr
    (path,) = out.rglob("synth-seg-*.record.json")
    record = load_record(path)
    samples = load_samples(path, record)
    assert record.n_samples == len(samples) == 32
    assert record.info["head"] == "global" and record.info["dense_path"].startswith("g_v(h_v(patch))")
    card = load_card("synth-seg")
    params = validate_params(SegmentationRunner.Params, card.params, card)
    assert SegmentationRunner.aggregate(samples, params) == pytest.approx(record.metric_values())

    # The same predictions again (deterministic), through mmseg's IoUMetric.
    runner = SegmentationRunner(card, params, make_ctx(synth_data_dir, tmp_path))
    model = load_model(str(tiny_sparc_ckpt))
    with torch.inference_mode():
        prep = runner.prepare(model)
        images = [(seg.pred, seg.label) for seg in runner.predictions(model, prep)]
    assert len(images) == 32 and prep.metric_classes == ["circle", "square", "triangle", "diamond", "cross", "star"]
    assert_matches_mmseg(6, images)
    ref = iou_metric.total_area_to_metrics(
        *(
            sum(t)
            for t in zip(*(iou_metric.intersect_and_union(torch.as_tensor(p), torch.as_tensor(lab), 6, 255) for p, lab in images))
        ),
        ["mIoU"],
    )
    assert record.metric_values()["mIoU"] == pytest.approx(100 * np.nanmean(ref["IoU"]), rel=1e-5)
    assert record.metric_values()["aAcc"] == pytest.approx(100 * float(ref["aAcc"]), rel=1e-5)


# ------------------------------------------------------------------------------ bad input: one line, exit 2, nothing written


def cli(*args) -> CliResult:
    """`sparc-eval ARGS` in this process (faster than a fresh interpreter for the error paths)."""
    from sparc_eval.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture()
def broken_voc(tmp_path) -> Path:
    data_dir = tmp_path / "data"
    write_voc_fixture(data_dir)
    return data_dir


def _run_bad(task, ckpt, data_dir, out, *needles):
    result = cli("run", "--task", task, "--ckpt", ckpt, "--data-dir", data_dir, "--out", out)
    assert_one_line_error(result, *needles)
    assert not [p for p in out.rglob("*") if p.is_file()]


# The shipped cards with one prompt template: the errors and the CLI path do not depend on the 80 of the real cards.


def test_label_of_wrong_size(tiny_sparc_ckpt, broken_voc, tmp_path):
    label = broken_voc / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "c.png"
    _save_label(label, np.zeros((60, 32)))
    card = derived_card(tmp_path, "voc-seg", templates="simple")
    _run_bad(card, tiny_sparc_ckpt, broken_voc, tmp_path / "results", str(label), "32x60")


def test_label_value_outside_the_classes(tiny_sparc_ckpt, broken_voc, tmp_path):
    label = broken_voc / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "b.png"
    bad = np.zeros((32, 64))
    bad[5, 5] = 30
    _save_label(label, bad)
    card = derived_card(tmp_path, "voc21-seg", templates="simple")
    _run_bad(card, tiny_sparc_ckpt, broken_voc, tmp_path / "results", str(label), "30")


def test_classname_file_with_wrong_number_of_lines(tiny_sparc_ckpt, fixture_data_dir, tmp_path):
    names = tmp_path / "nineteen.txt"
    names.write_text("".join(n + "\n" for n in VOC_CLASSES[1:20]))
    card = derived_card(tmp_path, "voc-seg", templates="simple", classnames=str(names))
    _run_bad(card, tiny_sparc_ckpt, fixture_data_dir, tmp_path / "results", str(names), "19 lines", "20")


def test_card_with_threshold_but_no_threshold_protocol(tiny_sparc_ckpt, fixture_data_dir, tmp_path):
    card = derived_card(tmp_path, "voc-seg", templates="simple", background_threshold=0.5)
    _run_bad(card, tiny_sparc_ckpt, fixture_data_dir, tmp_path / "results", str(card), "background_threshold")


def test_voc21_cli_end_to_end_on_fixture(tiny_sparc_ckpt, fixture_data_dir, tmp_path):
    out = tmp_path / "results"
    card = derived_card(tmp_path, "voc21-seg", templates="simple")
    result = cli("run", "--task", card, "--ckpt", tiny_sparc_ckpt, "--data-dir", fixture_data_dir, "--out", out, "--json")
    assert result.code == 0, result.stderr
    (raw,) = json.loads(result.stdout)
    assert raw["n_samples"] == 4 and set(raw["metrics"]) == {"mIoU", "aAcc", "mAcc"}
    assert raw["info"]["background"]["protocol"] == "threshold" and len(raw["info"]["per_class"]) == 21

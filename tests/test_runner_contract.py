"""Contract test over every registered runner: run it on a small SynthScenes slice with a tiny model, then
recompute each metric it declares with code written here, from the model's raw outputs, the dataset files
and the runner's raw artifacts, never through the runner's `aggregate` or the metric functions it calls.

A runner without an entry in CASES fails here: a new task kind comes with an independent recomputation of
its numbers (CONTRIBUTING.md). A metric may be left out only with a reason, listed in its case.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_objectives_reference import reference_fine_loss

from sparc_eval.data.registry import READERS
from sparc_eval.evaluation import run_evaluation
from sparc_eval.models.loaders import load_model
from sparc_eval.results.record import load_samples
from sparc_eval.tasks.card import BUILTIN_CARD_DIR, load_card, write_card_variant
from sparc_eval.tasks.runner import RUNNERS

LIMIT = 8


@dataclass
class Run:
    """One finished evaluation and what the recomputations read."""

    record: Any
    path: Path  # the record file
    card: Any  # the TaskCard
    model: torch.nn.Module
    data_dir: Path

    def root(self, spec) -> Path:
        """A dataset root with its placeholders filled in (as the card's docs define them)."""
        synth = self.card.synthscenes_dir(self.data_dir)
        return Path(spec.root.format(synthscenes=synth, data=self.data_dir))

    def dataset(self, spec=None, transform=None):
        spec = spec or self.card.dataset
        return READERS.get(spec.format)(self.root(spec), spec.split, transform=transform, **spec.options)

    def samples(self) -> list[dict]:
        return load_samples(self.path, self.record)

    def artifact(self, name: str) -> Any:
        return json.loads((self.path.parent / self.record.artifacts[name]).read_text())


@dataclass
class Case:
    card: str  # a built-in card
    recompute: Callable[[Run], dict[str, float | None]]
    params: dict[str, Any] = field(default_factory=dict)  # card params replaced (shorter fits)
    not_recomputed: dict[str, str] = field(default_factory=dict)  # metric -> why it is not recomputed here
    slow: bool = False
    # The runner works in float32, the recomputation in float64: differences of O(1) float32 numbers (a loss
    # gap) carry absolute errors of a few 1e-8.
    abs_tolerance: float = 1e-9


# ------------------------------------------------------------------------------------------ helpers


@torch.inference_mode()
def encode_images(model, images: list[Image.Image]) -> np.ndarray:
    return np.stack([model.encode_image(model.preprocess(im.convert("RGB"))[None])[0].double().numpy() for im in images])


@torch.inference_mode()
def encode_texts(model, texts: list[str]) -> np.ndarray:
    return np.stack([model.encode_text(model.tokenize([t]))[0].double().numpy() for t in texts])


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def templates_file(run: Run, relative: str) -> list[str]:
    lines = (run.root(run.card.dataset) / relative).read_text().splitlines()
    return [line for line in lines if line.strip()]


def prompt_ensemble(model, names: list[str], templates: list[str]) -> np.ndarray:
    """CLIP's prompt ensemble: mean of the normalised embeddings of every template, renormalised."""
    return unit(np.stack([unit(encode_texts(model, [t.replace("{}", n) for t in templates])).mean(0) for n in names]))


def strictly_better(scores: np.ndarray, positive: float) -> int:
    """Rank of a positive among scores when every tie counts against it: 1 + how many others score >= it."""
    return 1 + int((scores >= positive).sum())


# ------------------------------------------------------------------------------------------ recomputations


def classification(run: Run) -> dict[str, float | None]:
    dataset = run.dataset()
    items = [dataset[i] for i in range(LIMIT)]
    assert not any("," in n for n in dataset.classnames), "synonym lists need a best-synonym rule here"
    text = prompt_ensemble(run.model, list(dataset.classnames), templates_file(run, run.card.params["templates"]))
    logits = encode_images(run.model, [it["image"] for it in items]) @ text.T
    ranks, labels = [], []
    for row, item in zip(logits, items):
        label = int(item["label"])
        ranks.append(strictly_better(np.delete(row, label), row[label]))
        labels.append(label)
    ranks, labels = np.array(ranks), np.array(labels)
    recall = [np.mean(ranks[labels == c] == 1) for c in sorted(set(labels.tolist()))]
    top5 = float(np.mean(ranks <= 5)) if len(dataset.classnames) >= 5 else None
    return {"top1": float(np.mean(ranks == 1)), "top5": top5, "mean_per_class_recall": float(np.mean(recall))}


def retrieval(run: Run) -> dict[str, float | None]:
    dataset = run.dataset()
    items = [dataset[i] for i in range(LIMIT)]
    images = encode_images(run.model, [it["image"] for it in items])
    captions = [(i, c) for i, it in enumerate(items) for c in it["captions"]]
    texts = encode_texts(run.model, [c for _, c in captions])
    owner = np.array([i for i, _ in captions])
    sim = images @ texts.T  # [images, captions]
    i2t = [strictly_better(sim[i, owner != i], sim[i, owner == i].max()) for i in range(len(items))]
    t2i = [strictly_better(np.delete(sim[:, c], owner[c]), sim[owner[c], c]) for c in range(len(captions))]
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_r{k}"] = float(np.mean(np.array(i2t) <= k))
        out[f"t2i_r{k}"] = float(np.mean(np.array(t2i) <= k))
    return out


def segmentation(run: Run) -> dict[str, float | None]:
    """Per-patch arg-max over shape classes, bilinear upsampling, background ignored; IoU from the confusion counts."""
    p = run.card.params
    assert p["background"] == "ignore" and "crop" not in p and "short_side" not in p, "this recomputation covers synth-seg"
    dataset = run.dataset()
    names = list(dataset.classnames)[1:]  # class 0 is the background: ignored
    text = prompt_ensemble(run.model, names, templates_file(run, p["templates"]))
    n = len(names)
    confusion = np.zeros((n, n), np.int64)
    for i in range(LIMIT):
        item = dataset[i]
        image = item["image"].convert("RGB")
        with torch.inference_mode():
            pixels = run.model.preprocess(image)
            assert tuple(pixels.shape[-2:]) == image.size[::-1], "synth images already have the model's input size"
            dense, (h, w) = run.model.encode_image_dense(pixels[None], head=p["head"])
            cos = F.normalize(dense[0].double(), dim=-1) @ torch.from_numpy(text).T  # [P, classes]
            scores = cos.T.reshape(1, n, h, w)
            label = np.asarray(item["label"])
            scores = F.interpolate(scores, size=label.shape, mode="bilinear", align_corners=False)[0]
        pred = scores.argmax(0).numpy()
        truth = label.astype(np.int64) - 1
        keep = (label != 0) & (label != 255)
        confusion += np.bincount(truth[keep] * n + pred[keep], minlength=n * n).reshape(n, n)
    assert np.array_equal(confusion, np.array(run.artifact("confusion")["matrix"])), "the runner's confusion counts"
    return _iou_metrics(confusion)


def _iou_metrics(confusion: np.ndarray) -> dict[str, float | None]:
    """mmseg IoUMetric's definitions, in percent; with mmseg installed its own code is held against these."""
    inter = np.diag(confusion).astype(float)
    label, pred = confusion.sum(1), confusion.sum(0)
    union = label + pred - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / label
    out = {"mIoU": 100 * np.nanmean(iou), "aAcc": 100 * inter.sum() / confusion.sum(), "mAcc": 100 * np.nanmean(acc)}
    try:
        from mmseg.evaluation.metrics import IoUMetric
    except ImportError:
        return out
    areas = [torch.from_numpy(a.astype(np.float64)) for a in (inter, union, pred, label)]
    peer = IoUMetric(iou_metrics=["mIoU"]).total_area_to_metrics(*areas, ["mIoU"])
    assert 100 * np.nanmean(np.asarray(peer["IoU"])) == pytest.approx(out["mIoU"], rel=1e-12)
    assert 100 * float(peer["aAcc"]) == pytest.approx(out["aAcc"], rel=1e-12)
    assert 100 * np.nanmean(np.asarray(peer["Acc"])) == pytest.approx(out["mAcc"], rel=1e-12)
    return out


def detection(run: Run) -> dict[str, float | None]:
    """pycocotools COCOeval on the original annotation file (evaluated images only) and the detections artifact."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    spec = run.card.dataset
    annotation = (run.root(spec) / spec.options["annotation"].format(split=spec.split)).resolve()
    ground_truth = COCO(str(annotation))
    image_ids = [s["image_id"] for s in run.samples()]
    assert image_ids == [img["id"] for img in json.loads(annotation.read_text())["images"][:LIMIT]]
    results = ground_truth.loadRes(run.artifact("detections"))
    evaluator = COCOeval(ground_truth, results, iouType="bbox")
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    out = {name: (None if v < 0 else float(v)) for name, v in zip(names, evaluator.stats)}
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # all areas, 100 detections
    per_category = {}
    for k, cat in enumerate(evaluator.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        if valid.size:
            per_category[cat] = valid.mean()
    frequency = {c["id"]: c.get("frequency") for c in ground_truth.dataset["categories"]}
    for name, group in (("APr", "r"), ("APc", "c"), ("APf", "f")):
        aps = [ap for cat, ap in per_category.items() if frequency[cat] == group]
        out[name] = float(np.mean(aps)) if aps else None
    return out


def _kp_tokens(text: str) -> list[str]:
    """instruct-qa's normalisation: lowercase, no punctuation, no articles, whitespace split."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return [t for t in text.split() if t not in ("a", "an", "the")]


def _precision(pred: list[str], ref: list[str]) -> float:
    return sum((Counter(pred) & Counter(ref)).values()) / len(pred) if pred else 0.0


def captioning(run: Run) -> dict[str, float | None]:
    """K-P / K-Pna by hand (references joined), CIDEr-D by pycocoevalcap's own Cider, from the captions artifact."""
    assert not run.card.params.get("max_over_captions", False)
    dataset = run.dataset()
    references = {dataset[i]["image_id"]: dataset[i]["captions"] for i in range(LIMIT)}
    predictions = {c["image_id"]: c["caption"] for c in run.artifact("captions")}
    assert list(predictions) == list(references)
    joined = {k: _kp_tokens(" ".join(refs)) for k, refs in references.items()}
    out: dict[str, float | None] = {
        "kp": 100 * float(np.mean([_precision(_kp_tokens(predictions[k]), joined[k]) for k in predictions]))
    }
    try:
        import denckring_en_pos

        tagger = denckring_en_pos.tagger()
        kpna = []
        for k, pred in predictions.items():
            words = "".join(ch for ch in pred if ch not in string.punctuation).split()
            tags = [t.partition("|")[0] for t in tagger.tag(words)] if words else []
            kept = [
                w.lower() for w, t in zip(words, tags) if t in ("NOUN", "PROPN", "ADJ") and w.lower() not in ("a", "an", "the")
            ]
            kpna.append(_precision(kept, joined[k]))
        out["kpna"] = 100 * float(np.mean(kpna))
    except ImportError:
        out["kpna"] = None
    try:
        from pycocoevalcap.cider.cider import Cider

        def cider_text(text: str) -> str:
            return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())

        keys = list(predictions)
        score, _ = Cider().compute_score(
            {i: [cider_text(r) for r in references[k]] for i, k in enumerate(keys)},
            {i: [cider_text(predictions[k])] for i, k in enumerate(keys)},
        )
        out["cider"] = 100 * float(score)
    except ImportError:
        out["cider"] = None
    return out


def _sparse_weights(tok: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """SPARC's alignment weights (paper Eqs. 2-4) of token rows [L, D] over patches [P, D]."""
    sim = tok @ patch.T
    lo, hi = sim.min(1, keepdims=True), sim.max(1, keepdims=True)
    sim = (sim - lo) / (hi - lo)
    sim = np.where(sim < 1.0 / patch.shape[0], 0.0, sim)
    return sim / sim.sum(1, keepdims=True)


def grounding(run: Run) -> dict[str, float | None]:
    """Every word's alignment weights, object coverage and the probes, from the model and the annotation files."""
    from pycocotools.coco import COCO

    p = run.card.params
    assert run.model.describe()["objective"]["name"] == "sparc" and p["head"] == "local"
    spec = run.card.dataset
    coco = COCO(str(run.root(spec) / spec.options["annotation"].format(split=spec.split)))
    scenes = {
        img["image_id"]: img["captions"]
        for img in json.loads(Path(p["mentions_file"].format(synthscenes=run.card.synthscenes_dir(run.data_dir))).read_text())[
            "images"
        ]
    }
    dataset = run.dataset()
    model, samples = run.model, run.samples()
    scale = float(model.logit_scale.detach())
    words, patches, matched, mismatched, caption_tokens = [], [], [], [], []
    with torch.inference_mode():
        for i in range(LIMIT):
            item = dataset[i]
            image = item["image"].convert("RGB")
            dense, (h, w) = model.encode_image_dense(model.preprocess(image)[None], head="local")
            patches.append(dense[0].double().numpy())
            texts = [c["text"] for c in scenes[item["image_id"]]]
            tokens = model.tokenize(texts)
            tok, mask = model.encode_text_dense(tokens)
            caption_tokens.append((tokens, tok.double().numpy(), mask.numpy()))
            assert samples[i]["image_id"] == item["image_id"]
            for word in samples[i]["words"]:
                c, pos = word["caption"], word["token_positions"]
                # The word's token positions, as the record says, decode to the word itself.
                assert model.tokenizer.decode(tokens[c, pos].tolist()).strip() == word["word"].lower()
                row = _sparse_weights(tok[c, pos].double().numpy(), patches[-1]).mean(0)
                obj = np.zeros((image.size[1], image.size[0]), bool)
                for ann in word["instance_ids"]:
                    obj |= coco.annToMask(coco.anns[ann]).astype(bool)
                cover = obj.reshape(h, obj.shape[0] // h, w, obj.shape[1] // w).mean((1, 3)).reshape(-1)
                inside = cover >= 0.5
                words.append(
                    {
                        "hit": inside[row == row.max()].mean(),
                        "mass": (row * cover).sum() / row.sum(),
                        "inside": inside.mean(),
                        "area": cover.mean(),
                        "nnz": (row > 0).sum(),
                        "n": row.size,
                    }
                )
    # Fine-grained loss of each caption with its own image, and with the next image's patches (the last: the first's).
    for i, (_, tok, mask) in enumerate(caption_tokens):
        for c in range(len(tok)):
            real = mask[c][None].astype(float)
            matched.append(reference_fine_loss(tok[c][None], real, patches[i][None], scale))
            mismatched.append(reference_fine_loss(tok[c][None], real, patches[(i + 1) % LIMIT][None], scale))
    x = np.stack(patches)  # [N, P, D]
    r2 = 1 - ((x - x.mean(0)) ** 2).sum() / ((x - x.mean((0, 1))) ** 2).sum()
    m, mm = float(np.mean(matched)), float(np.mean(mismatched))
    mean = lambda key: float(np.mean([wd[key] for wd in words]))  # noqa: E731
    return {
        "pointing_acc": mean("hit"),
        "pointing_chance": mean("inside"),
        "mass_in_object": mean("mass"),
        "mass_chance": mean("area"),
        "nnz_patches": mean("nnz"),
        "nnz_share": float(np.mean([wd["nnz"] / wd["n"] for wd in words])),
        "fine_loss_matched": m,
        "fine_loss_mismatched": mm,
        "fine_loss_gap": mm - m,
        "fine_loss_ratio": mm / m,
        "position_r2": float(r2),
    }


def hard_negatives(run: Run) -> dict[str, float | None]:
    """Right when the true caption's cosine beats every negative's strictly; per type and the mean over types present."""
    dataset = run.dataset()
    items = [dataset[i] for i in range(LIMIT)]
    images = encode_images(run.model, [it["image"] for it in items])
    right: dict[str, list[float]] = {}
    chance: dict[str, list[float]] = {}
    for image, item in zip(images, items):
        for entry in item["entries"]:
            scores = encode_texts(run.model, [entry["positive"], *entry["negatives"]]) @ image
            right.setdefault(entry["type"], []).append(float(all(scores[0] > scores[1:])))
            chance.setdefault(entry["type"], []).append(1 / len(scores))
    listed = run.card.dataset.options["types"]  # a record holds the card's types only
    out: dict[str, float | None] = {f"{kind}_{t}": None for t in ("mean", *listed) for kind in ("acc", "chance")}
    for t in right:
        out[f"acc_{t}"], out[f"chance_{t}"] = float(np.mean(right[t])), float(np.mean(chance[t]))
    out["acc_mean"] = float(np.mean([out[f"acc_{t}"] for t in right]))
    out["chance_mean"] = float(np.mean([out[f"chance_{t}"] for t in right]))
    return out


CASES: dict[str, Case] = {
    "classification": Case("synth-cls", classification),
    "retrieval": Case("synth-retrieval", retrieval),
    "segmentation": Case("synth-seg", segmentation),
    "detection": Case("synth-det", detection, params={"epochs": 1}, slow=True),
    # lr 0.005: one epoch at the card's lr decodes "a a a ...", which scores 0 everywhere and tells nothing.
    "captioning": Case("synth-kprecision", captioning, params={"epochs": 2, "lr": 0.005}, slow=True),
    "grounding": Case("synth-grounding", grounding, abs_tolerance=1e-6),
    "hard_negatives": Case("synth-binding", hard_negatives),
}


def _params():
    for kind in RUNNERS.names():
        case = CASES.get(kind)
        yield pytest.param(kind, marks=[pytest.mark.slow] if case and case.slow else [], id=kind)


@pytest.mark.parametrize("kind", list(_params()))
def test_metrics_match_an_independent_computation(kind, tiny_sparc_ckpt, synth_data_dir, tmp_path):
    if kind not in CASES:
        pytest.fail(f"runner {kind!r} has no independent recomputation: add a Case for it to CASES in {__file__}")
    case, runner = CASES[kind], RUNNERS.get(kind)
    card_path = BUILTIN_CARD_DIR / f"{case.card}.yaml"
    if case.params:
        card_path = write_card_variant(card_path, tmp_path / card_path.name, "contract test: shorter fit", params=case.params)
    evaluation = run_evaluation(
        str(tiny_sparc_ckpt), card_path, out=tmp_path / "results", data_dir=synth_data_dir, limit=LIMIT, batch_size=4
    )
    record = evaluation.record
    assert record.task["runner"] == kind and record.task["family"] == runner.family
    card = load_card(card_path)
    declared = runner.card_metrics(card)
    assert {name: m.higher_is_better for name, m in record.metrics.items()} == declared
    assert all(runner.metrics[name] is higher for name, higher in declared.items())  # a subset of the declaration
    run = Run(record, evaluation.path, card, load_model(str(tiny_sparc_ckpt)), synth_data_dir)
    expected = case.recompute(run)
    assert set(expected) == set(declared) - set(case.not_recomputed)
    got = record.metric_values()
    for name, value in expected.items():
        if value is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(value, rel=1e-6, abs=case.abs_tolerance), name
    # The regression gate's paired bootstrap re-scores per-sample records with `aggregate`: it must give the
    # record's numbers back from the samples file (a separate promise from the check above).
    params = run.card.runner_params
    rescored = runner.aggregate(run.samples(), params)
    assert {name: rescored[name] for name in got} == pytest.approx(got, rel=1e-9, abs=1e-12)
    assert all(rescored[name] is None for name in set(rescored) - set(got))  # what the card leaves out has no value

"""Zero-shot classification: prompts and class names, the prompt ensemble, and the runner on known answers."""

from __future__ import annotations

import pytest
import torch
from colour_fakes import ColourModel, make_ctx, run_runner, write_imagefolder
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from sparc_eval.errors import SparcEvalError
from sparc_eval.tasks.prompts import (
    best_synonym_scores,
    class_text_embeddings,
    classname_file,
    flatten_synonyms,
    read_classnames,
    read_templates,
    resolve_templates,
)

FIVE = ["red", "green", "blue", "white", "grey"]


def _card(root, **params) -> dict:
    return {
        "name": "colours",
        "version": 1,
        "runner": "classification",
        "dataset": {"format": "imagefolder", "root": str(root), "split": "val"},
        "params": params,
    }


# --------------------------------------------------------------------------------------------- prompts


def test_named_template_sets():
    openai = resolve_templates("openai-imagenet")
    assert len(openai) == 80
    assert [t.replace("{}", "cat") for t in openai] == [t("cat") for t in OPENAI_IMAGENET_TEMPLATES]
    assert resolve_templates("simple") == ("a photo of a {}.",)


def test_template_file(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\nart of the {}\n")
    with pytest.raises(SparcEvalError, match=r"t.txt: line 2 is empty"):
        read_templates(tmp_path / "t.txt")
    (tmp_path / "t.txt").write_text("a photo of a {}.\nart of the {}\n\n")
    assert resolve_templates("t.txt", tmp_path) == ("a photo of a {}.", "art of the {}")
    (tmp_path / "t.txt").write_text("a photo of a {}.\nno placeholder\n")
    with pytest.raises(SparcEvalError, match=r"line 2 .* must hold"):
        read_templates(tmp_path / "t.txt")
    with pytest.raises(SparcEvalError, match="missing.txt does not exist"):
        resolve_templates("missing.txt", tmp_path)


def test_classname_file_with_synonyms(tmp_path):
    (tmp_path / "c.txt").write_text("car, automobile\nperson\n  bus ,coach  \n")
    assert read_classnames(tmp_path / "c.txt") == [["car", "automobile"], ["person"], ["bus", "coach"]]
    (tmp_path / "c.txt").write_text("car,\n")
    with pytest.raises(SparcEvalError, match="line 1: class name 'car,' has an empty synonym"):
        read_classnames(tmp_path / "c.txt")
    (tmp_path / "c.txt").write_text("")
    with pytest.raises(SparcEvalError, match="is empty"):
        read_classnames(tmp_path / "c.txt")


def test_builtin_imagenet_file_is_timm_ids_with_open_clip_names():
    from timm.data import ImageNetInfo

    lines = classname_file("imagenet").read_text(encoding="utf-8").splitlines()
    assert lines == [f"{wnid}\t{name}" for wnid, name in zip(ImageNetInfo().label_names(), IMAGENET_CLASSNAMES)]
    assert len(lines) == 1000
    with pytest.raises(SparcEvalError, match="unknown built-in class-name list 'imagenet21k'"):
        classname_file("imagenet21k")


def test_best_synonym_scores():
    names, owners = flatten_synonyms([["a", "b"], ["c"], ["d", "e", "f"]])
    assert names == ["a", "b", "c", "d", "e", "f"] and owners.tolist() == [0, 0, 1, 2, 2, 2]
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3], [0.4, 0.3, 0.6, -1.0, -2.0, -0.5]], dtype=torch.float64)
    assert best_synonym_scores(scores, owners, 3).tolist() == [[0.5, 0.2, 0.9], [0.4, 0.6, -0.5]]


def test_ensemble_matches_open_clip_build_zero_shot_classifier(tmp_path):
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from sparc_eval.models.openclip_model import OpenClipModel

    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    clip.visual.preprocess_cfg = {"size": (16, 16)}  # open_clip.create_model sets this; built by hand here
    model = OpenClipModel(clip, "ViT-B-32", {"ref": "tiny-test"})
    names, templates = ["cat", "dog", "fish"], resolve_templates("openai-imagenet")[:7]
    ctx = make_ctx(tmp_path, batch_size=5)  # batches cut across classes
    with torch.inference_mode():
        ours = class_text_embeddings(model, names, templates, ctx)
        peer = build_zero_shot_classifier(clip, model.tokenize, names, templates, num_classes_per_batch=2).T
    torch.testing.assert_close(ours, peer, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3))


def test_text_embeddings_are_encoded_once_per_run(tmp_path):
    model, ctx = ColourModel(), make_ctx(tmp_path, batch_size=3)
    first = class_text_embeddings(model, ["red", "blue"], ["a {}.", "the {} one", "{}"], ctx)
    assert model.encoded_texts == ["a red.", "the red one", "red", "a blue.", "the blue one", "blue"]
    again = class_text_embeddings(model, ["red", "blue"], ["a {}.", "the {} one", "{}"], ctx)
    assert again is first and len(model.encoded_texts) == 6
    class_text_embeddings(model, ["red", "blue"], ["a {}."], ctx)  # other templates: encoded anew
    assert len(model.encoded_texts) == 8
    class_text_embeddings(model, ["red", "blue"], ["a {}.", "the {} one", "{}"], make_ctx(tmp_path))  # another run
    assert len(model.encoded_texts) == 14


# -------------------------------------------------------------------------------------------- runner


def test_known_answers_with_a_misfiled_image_and_a_tie(tmp_path):
    # A blue image filed under "red": blue scores 1, grey > white, then red and green tie -> rank 5.
    folders = {"red": ["red", "red", "blue"], "green": ["green"], "blue": ["blue", "blue"], "white": ["white"], "grey": ["grey"]}
    root = write_imagefolder(tmp_path / "ds", "val", folders, FIVE)
    output, runner_cls, params = run_runner(tmp_path, _card(root, templates="simple"), ColourModel())
    assert output.n_samples == 8
    assert output.metrics["top1"] == pytest.approx(7 / 8)
    assert output.metrics["top5"] == 1.0
    assert output.metrics["mean_per_class_recall"] == pytest.approx((2 / 3 + 4) / 5)
    misfiled = next(s for s in output.samples if s["id"] == "val/red/002.png")
    assert misfiled["label"] == 0 and misfiled["class"] == "red"
    assert misfiled["predictions"] == [2, 4, 3, 0, 1]  # tied red/green listed by class index
    assert (misfiled["rank"], misfiled["top1"], misfiled["top5"]) == (5, 0, 1)
    # aggregate on hand-picked subsets: without the misfiled image every class is recalled; alone, it is a top-5 hit only.
    rest = [s for s in output.samples if s is not misfiled]
    assert runner_cls.aggregate(rest, params) == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}
    assert runner_cls.aggregate([misfiled], params) == {"top1": 0.0, "top5": 1.0, "mean_per_class_recall": 0.0}
    assert output.info["n_classes"] == 5 and output.info["templates"] == "simple"


def test_fewer_than_five_classes_leaves_top5_undefined(tmp_path):
    root = write_imagefolder(tmp_path / "ds", "val", {"red": ["red", "green"], "green": ["green"]}, ["red", "green"])
    output, runner_cls, params = run_runner(tmp_path, _card(root), ColourModel())
    assert output.metrics == {"top1": 2 / 3, "top5": None, "mean_per_class_recall": 0.75}
    assert all(s["top5"] is None for s in output.samples)
    assert runner_cls.aggregate(output.samples[:1], params)["top5"] is None


def test_best_synonym_and_template_file_relative_to_root(tmp_path):
    # Class 0 is listed as "crimson, red": only its second synonym is a colour the model knows.
    folders = {"red": ["red", "red"], "blue": ["blue"], "white": ["white"]}
    root = write_imagefolder(tmp_path / "ds", "val", folders, ["red\tcrimson, red", "blue", "white"])
    (root / "prompts.txt").write_text("a photo of a {}.\na {} thing\n")
    model = ColourModel()
    output, _, _ = run_runner(tmp_path, _card(root, templates="prompts.txt"), model)
    assert output.metrics["top1"] == 1.0
    assert "a crimson thing" in model.encoded_texts and "a photo of a red." in model.encoded_texts
    assert {s["class"] for s in output.samples if s["label"] == 0} == {"crimson"}
    # Without the synonym, red images go to "white", the nearest colour the model knows.
    (root / "classnames.txt").write_text("red\tcrimson\nblue\nwhite\n")
    output, _, _ = run_runner(tmp_path, _card(root, templates="prompts.txt"), ColourModel())
    assert output.metrics["top1"] == 0.5


def test_limit_and_batch_size_do_not_change_per_sample_results(tmp_path):
    folders = {c: [c, "grey", c] for c in FIVE}
    root = write_imagefolder(tmp_path / "ds", "val", folders, FIVE)
    whole, _, _ = run_runner(tmp_path, _card(root), ColourModel(), batch_size=15)
    cut, _, _ = run_runner(tmp_path, _card(root), ColourModel(), batch_size=2, limit=7)
    assert cut.n_samples == 7 and cut.samples == whole.samples[:7]


def test_classname_file_that_does_not_match_the_folders(tmp_path):
    root = write_imagefolder(tmp_path / "ds", "val", {"red": ["red"], "teal": ["blue"]}, ["red", "blue"])
    with pytest.raises(SparcEvalError, match="teal is not listed in class-name file"):
        run_runner(tmp_path, _card(root), ColourModel())


def test_non_finite_embeddings_are_a_clear_error(tmp_path):
    class Broken(ColourModel):
        def encode_image(self, images):
            return torch.full((images.shape[0], 4), float("nan"))

    root = write_imagefolder(tmp_path / "ds", "val", {"red": ["red"]}, ["red"])
    with pytest.raises(SparcEvalError, match="colour-model produced non-finite image embeddings"):
        run_runner(tmp_path, _card(root), Broken())


def test_imagenet_card_on_an_ilsvrc_style_folder(tmp_path):
    # {data}/imagenet/val/<wnid>/: the first two ILSVRC classes; the other 998 have no folder here.
    folders = {"n01440764": ["red"], "n01443537": ["blue", "green"]}
    write_imagefolder(tmp_path / "imagenet", "val", folders, [])
    model = ColourModel()
    output, _, _ = run_runner(tmp_path, "imagenet-zs", model, batch_size=8000)
    assert [(s["label"], s["class"]) for s in output.samples] == [(0, "tench"), (1, "goldfish"), (1, "goldfish")]
    assert output.info["n_classes"] == 1000 and output.info["n_templates"] == 80
    assert len(model.encoded_texts) == 80_000 and "a bad photo of a tench." in model.encoded_texts
    assert all(len(s["predictions"]) == 5 for s in output.samples)

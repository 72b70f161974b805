"""`hf:` checkpoints (transformers CLIPModel / SiglipModel folders), held against transformers called directly.

Tiny random-init models are saved with `save_pretrained` (tests/hf_fixtures.py, offline) and read back
through `hf:`; every expected value below comes from transformers itself (its forward, its processor, its
sub-modules) or from the formula written out by hand, never from sparc-eval's own code.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, run_cli
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from hf_fixtures import IMAGE_SIZE, save_tiny_clip, save_tiny_siglip  # noqa: E402

from sparc_eval import load_model  # noqa: E402
from sparc_eval.errors import SparcEvalError  # noqa: E402
from sparc_eval.models.contract import ImageTextModel  # noqa: E402
from sparc_eval.models.hf_model import CLIP_DENSE, SIGLIP_DENSE  # noqa: E402

KINDS = ("clip", "siglip")
TEXTS = ["a small red circle.", "Two BLUE squares, top left!", "a", "a large green star " * 6]  # the last is truncated


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"clip": save_tiny_clip(root / "clip"), "siglip": save_tiny_siglip(root / "siglip")}


@pytest.fixture(scope="module")
def models(folders):
    return {kind: load_model(f"hf:{folder}") for kind, folder in folders.items()}


def _reference(folder: Path):
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _pooled(out) -> torch.Tensor:
    # get_*_features: a tensor in transformers 4, a model output whose pooler_output is the embedding in 5.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _images() -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    sizes = [(40, 50), (64, 64), (31, 77)]
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()) for w, h in sizes]


def _text_inputs(processor, kind: str, texts: list[str]) -> dict:
    # As each model's documentation calls it: SigLIP padded to max_length (it pools the last position).
    padding = "max_length" if kind == "siglip" else True
    return dict(processor(text=texts, padding=padding, truncation=True, return_tensors="pt"))


# ------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("kind", KINDS)
def test_global_embeddings_and_logits_match_transformers(folders, models, kind):
    model = models[kind]
    assert isinstance(model, ImageTextModel) and not model.training
    reference, processor = _reference(folders[kind])
    images = _images()
    with torch.no_grad():
        out = reference(
            **_text_inputs(processor, kind, TEXTS), pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]
        )
        pixels = torch.stack([model.preprocess(im) for im in images])
        image, text = model.encode_image(pixels), model.encode_text(model.tokenize(TEXTS))
    torch.testing.assert_close(image, out.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(text, out.text_embeds, atol=1e-5, rtol=0)
    bias = float(reference.logit_bias.detach()) if kind == "siglip" else 0.0
    torch.testing.assert_close(model.logit_scale * image @ text.T + bias, out.logits_per_image, atol=1e-4, rtol=0)
    described = model.describe()
    assert described["logit_scale"] == pytest.approx(float(reference.logit_scale.detach().exp()))
    if kind == "siglip":
        assert described["logit_bias"] == pytest.approx(bias)
        # Ranking by cosine is ranking by the model's own sigmoid probabilities (a shared bias, a positive scale).
        assert torch.equal(out.logits_per_image.sigmoid().argsort(1), (image @ text.T).argsort(1))


def test_clip_dense_path_by_hand(folders, models):
    model = models["clip"]
    reference, _ = _reference(folders["clip"])
    pixels = torch.stack([model.preprocess(im) for im in _images()])
    tokens = model.tokenize(TEXTS)
    vision, ln = reference.vision_model, reference.vision_model.post_layernorm
    with torch.no_grad():
        dense, grid = model.encode_image_dense(pixels)
        hidden = vision(pixel_values=pixels).last_hidden_state
        normed = F.layer_norm(hidden, hidden.shape[-1:], ln.weight, ln.bias, ln.eps)
        projection = reference.visual_projection.weight.T
        assert grid == (IMAGE_SIZE // 8, IMAGE_SIZE // 8) and dense.shape == (3, 16, 24)
        torch.testing.assert_close(dense, normed[:, 1:] @ projection)
        # The patches take the same maps as the class token, which gives the global embedding.
        torch.testing.assert_close(model.encode_image(pixels), F.normalize(normed[:, 0] @ projection, dim=-1))
        torch.testing.assert_close(model.encode_image_dense(pixels, head="local")[0], dense)

        text_dense, mask = model.encode_text_dense(tokens)
        text_hidden = reference.text_model(input_ids=tokens).last_hidden_state  # causal: padding changes no real position
        expected = text_hidden @ reference.text_projection.weight.T
        words = [len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
        assert mask.sum(1).tolist() == [min(n, model.context_length - 2) for n in words]
        torch.testing.assert_close(text_dense[mask], expected[mask])
        eos = (tokens == model.tokenizer.eos_token_id).int().argmax(1)
        torch.testing.assert_close(model.encode_text(tokens), F.normalize(expected[torch.arange(len(TEXTS)), eos], dim=-1))


def test_siglip_dense_path_by_hand(folders, models):
    model = models["siglip"]
    reference, _ = _reference(folders["siglip"])
    pixels = torch.stack([model.preprocess(im) for im in _images()])
    tokens = model.tokenize(TEXTS)
    head = reference.vision_model.head
    assert reference.config.vision_config.hidden_act == "gelu_pytorch_tanh"
    with torch.no_grad():
        dense, grid = model.encode_image_dense(pixels)
        x = reference.vision_model(pixel_values=pixels).last_hidden_state  # SigLIP: already post_layernorm
        d = x.shape[-1]
        w, b = head.attention.in_proj_weight, head.attention.in_proj_bias
        values = x @ w[2 * d :].T + b[2 * d :]
        z = values @ head.attention.out_proj.weight.T + head.attention.out_proj.bias
        m = F.layer_norm(z, (d,), head.layernorm.weight, head.layernorm.bias, head.layernorm.eps)
        mlp = (
            F.gelu(m @ head.mlp.fc1.weight.T + head.mlp.fc1.bias, approximate="tanh") @ head.mlp.fc2.weight.T + head.mlp.fc2.bias
        )
        assert grid == (4, 4) and dense.shape == (3, 16, 48)
        torch.testing.assert_close(dense, z + mlp)
        # Each patch's dense embedding is what the pooling head returns when that patch is its only key.
        for i in range(dense.shape[1]):
            torch.testing.assert_close(dense[:, i], head(x[:, i : i + 1]), atol=1e-5, rtol=1e-5)

        text_dense, mask = model.encode_text_dense(tokens)
        hidden = reference.text_model(input_ids=tokens).last_hidden_state
        expected = hidden @ reference.text_model.head.weight.T + reference.text_model.head.bias
        torch.testing.assert_close(text_dense, expected)
        # SigLIP pools the last position (padding or not): the global text embedding is that token's, normalised.
        torch.testing.assert_close(model.encode_text(tokens), F.normalize(expected[:, -1], dim=-1))
        words = [len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
        assert mask.sum(1).tolist() == [min(n, model.context_length - 1) for n in words]
    assert model.describe()["dense_heads"] == {"global": SIGLIP_DENSE, "local": SIGLIP_DENSE}
    assert models["clip"].describe()["dense_heads"] == {"global": CLIP_DENSE, "local": CLIP_DENSE}


@pytest.mark.parametrize("kind", KINDS)
def test_attention_mask_is_the_one_the_tokenizer_returns(models, kind):
    model = models[kind]
    tokens = model.tokenize(TEXTS)
    asked = model.tokenizer(
        TEXTS,
        padding="max_length",
        truncation=True,
        max_length=model.context_length,
        return_attention_mask=True,
        return_tensors="pt",
    )
    assert torch.equal(asked["input_ids"], tokens)
    assert torch.equal(model.attention_mask(tokens), asked["attention_mask"])


def test_siglip_tokenizer_that_returns_a_mask_gets_it_passed(folders, tmp_path):
    """A SigLIP folder whose tokenizer returns an attention mask: the tower is called with it, as transformers would be."""
    from transformers import AutoTokenizer

    folder = tmp_path / "siglip-masked"
    shutil.copytree(folders["siglip"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(folder)
    model = load_model(f"hf:{folder}")
    reference, processor = _reference(folder)
    inputs = _text_inputs(processor, "siglip", TEXTS)
    assert "attention_mask" in inputs and "with the tokenizer's attention mask" in model.describe()["text_encoding"]
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(model.tokenize(TEXTS)),
            F.normalize(_pooled(reference.get_text_features(**inputs)), dim=-1),
            atol=1e-5,
            rtol=0,
        )


def test_describe_names_source_class_and_every_file_read(folders, models):
    d = models["siglip"].describe()
    assert d["source"] == "hf" and d["class"] == "transformers.SiglipModel" and d["ref"] == f"hf:{folders['siglip']}"
    assert set(d["files"]) == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "spiece.model",
        "tokenizer_config.json",
    } | ({"special_tokens_map.json"} if (folders["siglip"] / "special_tokens_map.json").exists() else set())
    assert "same" in d["scoring"] and d["tokenizer"] == "SiglipTokenizer"


def test_hash_covers_preprocessing(folders, models, tmp_path):
    """Changing only the image processor changes the numbers, so it must change the hash that keys results."""
    folder = tmp_path / "clip-other-mean"
    shutil.copytree(folders["clip"], folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["image_mean"] = [0.5, 0.5, 0.5]
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    assert load_model(f"hf:{folder}").describe()["sha256"] != models["clip"].describe()["sha256"]


# ------------------------------------------------------------------------------------------ tasks


def _plain_embeddings(folder: Path, kind: str, images: list[Image.Image], texts: list[str]):
    """Normalised image and text embeddings, scale and bias, with transformers alone."""
    reference, processor = _reference(folder)
    with torch.no_grad():
        image = _pooled(reference.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]))
        text = _pooled(reference.get_text_features(**_text_inputs(processor, kind, texts)))
    bias = float(reference.logit_bias.detach()) if kind == "siglip" else 0.0
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1), float(reference.logit_scale.detach().exp()), bias


def _similarity(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float, kind: str) -> torch.Tensor:
    logits = scale * image.double() @ text.double().T + bias
    return logits.sigmoid() if kind == "siglip" else logits.softmax(-1)  # each model's own probabilities


def _rank(scores: torch.Tensor, positives: list[int]) -> int:
    """1 + the candidates that are not positives and score at least as high as the best positive (ties count against)."""
    best = scores[positives].max()
    others = torch.ones(len(scores), dtype=torch.bool)
    others[positives] = False
    return 1 + int((scores[others] >= best).sum())


def _plain_classification(root: Path, folder: Path, kind: str, limit: int) -> tuple[dict, list[int]]:
    names = (root / "imagefolder" / "classnames.txt").read_text().split("\n")
    names = [n for n in names if n]
    templates = [t for t in (root / "imagefolder" / "templates.txt").read_text().split("\n") if t]
    items = [
        (p, names.index(d.name.replace("_", " ")))
        for d in sorted((root / "imagefolder" / "val").iterdir())
        for p in sorted(d.iterdir())
    ]
    items = items[:limit]
    images = [Image.open(p).convert("RGB") for p, _ in items]
    prompts = [t.format(n) for n in names for t in templates]
    image, text, scale, bias = _plain_embeddings(folder, kind, images, prompts)
    classes = F.normalize(text.reshape(len(names), len(templates), -1).mean(1), dim=-1)  # the prompt ensemble
    probs = _similarity(image, classes, scale, bias, kind)
    ranks = [_rank(p, [label]) for p, (_, label) in zip(probs, items)]
    labels = [label for _, label in items]
    per_class = [sum(r == 1 for r, y in zip(ranks, labels) if y == c) / labels.count(c) for c in sorted(set(labels))]
    metrics = {
        "top1": sum(r == 1 for r in ranks) / len(ranks),
        "top5": sum(r <= 5 for r in ranks) / len(ranks),
        "mean_per_class_recall": sum(per_class) / len(per_class),
    }
    return metrics, ranks


def _plain_retrieval(root: Path, folder: Path, kind: str, limit: int) -> tuple[dict, list[int], list[int]]:
    entries = [
        e for e in json.loads((root / "karpathy" / "dataset_synthscenes.json").read_text())["images"] if e["split"] == "test"
    ]
    entries = entries[:limit]
    images = [Image.open(root / e["filepath"] / e["filename"]).convert("RGB") for e in entries]
    captions = [(i, s["raw"].strip()) for i, e in enumerate(entries) for s in e["sentences"]]
    image, text, scale, bias = _plain_embeddings(folder, kind, images, [c for _, c in captions])
    probs = _similarity(image, text, scale, bias, kind) if kind == "siglip" else scale * image.double() @ text.double().T
    image_ranks = [_rank(probs[i], [j for j, (owner, _) in enumerate(captions) if owner == i]) for i in range(len(entries))]
    text_ranks = [_rank(probs[:, j], [owner]) for j, (owner, _) in enumerate(captions)]
    metrics = {f"i2t_r{k}": sum(r <= k for r in image_ranks) / len(image_ranks) for k in (1, 5, 10)}
    metrics |= {f"t2i_r{k}": sum(r <= k for r in text_ranks) / len(text_ranks) for k in (1, 5, 10)}
    return metrics, image_ranks, text_ranks


def _samples(out: Path, record: dict) -> list[dict]:
    [path] = list(out.glob(f"*/{record['samples_file']}"))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_synth_tasks_match_plain_transformers_scoring(folders, synth_root, synth_data_dir, tmp_path, kind):
    limit = 12
    out = tmp_path / "results"
    result = run_cli(
        "run", "--task", "synth-cls", "--task", "synth-retrieval", "--task", "synth-seg", "--ckpt", f"hf:{folders[kind]}",
        "--limit", str(limit), "--data-dir", synth_data_dir, "--out", out, "--num-workers", "0", "--no-cache", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    cls, ret, seg = json.loads(result.stdout)

    metrics, ranks = _plain_classification(synth_root, folders[kind], kind, limit)
    assert [s["rank"] for s in _samples(out, cls)] == ranks
    assert {k: v["value"] for k, v in cls["metrics"].items()} == pytest.approx(metrics, abs=1e-12)

    metrics, image_ranks, text_ranks = _plain_retrieval(synth_root, folders[kind], kind, limit)
    samples = _samples(out, ret)
    assert [s["rank"] for s in samples if s["kind"] == "image"] == image_ranks
    assert [s["rank"] for s in samples if s["kind"] == "caption"] == text_ranks
    assert {k: v["value"] for k, v in ret["metrics"].items()} == pytest.approx(metrics, abs=1e-12)

    # The record names the source, the class and the dense path; segmentation ran on that dense path.
    dense = SIGLIP_DENSE if kind == "siglip" else CLIP_DENSE
    ckpt = cls["checkpoint"]
    assert ckpt["source"] == "hf" and ckpt["class"] == f"transformers.{'SiglipModel' if kind == 'siglip' else 'CLIPModel'}"
    assert ckpt["dense_heads"]["global"] == dense and seg["info"]["dense_path"] == dense
    assert seg["metrics"]["mIoU"]["value"] is not None


# ------------------------------------------------------------------------------------------ sources and bad input


def test_hub_name_is_fetched_and_its_commit_recorded(folders, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "cache" / "snapshots" / "0123abcd"
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, allow_patterns))
        shutil.copytree(folders["clip"], snapshot, dirs_exist_ok=True)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("hf:someorg/tiny-clip@v1.0")
    d = model.describe()
    assert d["ref"] == "hf:someorg/tiny-clip@v1.0" and d["hub"] == {
        "repo": "someorg/tiny-clip",
        "revision": "v1.0",
        "commit": "0123abcd",
    }
    [(repo, revision, patterns)] = calls
    assert (repo, revision) == ("someorg/tiny-clip", "v1.0") and not any(
        "bin" in p for p in patterns
    )  # no pickles unless trusted


def test_hub_name_offline_is_one_line_saying_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SparcEvalError) as err:
        load_model("hf:no-such-org-h6/no-such-model")
    message = str(err.value)
    assert "could not fetch Hub repository 'no-such-org-h6/no-such-model'" in message and "pass hf:DIR" in message
    assert "\n" not in message


def test_missing_transformers_names_the_extra(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(SparcEvalError, match=r"optional extra 'hf' \(transformers\): pip install 'sparc-eval\[hf\]'"):
        load_model(f"hf:{folders['clip']}")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_tower(tmp_path: Path, folders) -> Path:
    from transformers import CLIPConfig, CLIPVisionModelWithProjection

    config = CLIPConfig.from_pretrained(folders["clip"])
    CLIPVisionModelWithProjection(config.vision_config).save_pretrained(tmp_path / "tower")
    return tmp_path / "tower"


def _bert(tmp_path: Path, folders) -> Path:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def _crossed_weights(tmp_path: Path, folders) -> Path:
    folder = _copy(folders["siglip"], tmp_path / "siglip-with-clip-weights")
    shutil.copy(folders["clip"] / "model.safetensors", folder / "model.safetensors")
    return folder


def _no_pooling_head(tmp_path: Path, folders) -> Path:
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig.from_pretrained(folders["siglip"])
    if not hasattr(config.vision_config, "vision_use_head"):
        pytest.skip("this transformers has no SigLIP towers without a pooling head")
    config.vision_config.vision_use_head = False
    folder = _copy(folders["siglip"], tmp_path / "siglip-no-head")
    SiglipModel(config).save_pretrained(folder)
    return folder


def _wrong_image_size(tmp_path: Path, folders) -> Path:
    folder = _copy(folders["siglip"], tmp_path / "siglip-48px")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["size"] = {"height": 48, "width": 48}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


def _no_tokenizer(tmp_path: Path, folders) -> Path:
    folder = _copy(folders["clip"], tmp_path / "clip-no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return folder


def _no_weights(tmp_path: Path, folders) -> Path:
    folder = _copy(folders["clip"], tmp_path / "clip-no-weights")
    (folder / "model.safetensors").unlink()
    return folder


def _readme_only(tmp_path: Path, folders) -> Path:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a model")
    return tmp_path / "notes"


@pytest.mark.parametrize(
    "make,needle",
    [
        (_readme_only, "is not a transformers model folder (it has no config.json)"),
        (_bert, "holds a BertModel (model_type 'bert'); hf: reads CLIPModel and SiglipModel folders"),
        (_one_tower, "holds a CLIPVisionModelWithProjection, a single tower"),
        (_crossed_weights, "its weights do not fit its config (SiglipModel)"),
        (_no_pooling_head, "its SigLIP vision tower has no pooling head (vision_use_head is false)"),
        (_wrong_image_size, "its image processor makes images of shape [3, 48, 48], the model takes [3, 32, 32]"),
        (_no_tokenizer, "has no tokenizer files (one of tokenizer.json, vocab.json, spiece.model"),
        (_no_weights, "has no weights (model.safetensors or pytorch_model.bin)"),
    ],
)
def test_bad_folders_are_one_line_naming_the_folder(tmp_path, folders, make, needle):
    folder = make(tmp_path, folders)
    with pytest.raises(SparcEvalError) as err:
        load_model(f"hf:{folder}")
    message = str(err.value)
    assert needle in message and str(folder) in message and "\n" not in message, message


def test_a_sparc_eval_folder_is_not_a_transformers_folder(tiny_sparc_ckpt):
    with pytest.raises(SparcEvalError, match="its config.json names no model_type"):
        load_model(f"hf:{tiny_sparc_ckpt}")


def test_paths_that_are_not_folders(tmp_path, folders):
    with pytest.raises(SparcEvalError, match=f"folder {tmp_path}/absent .* does not exist"):
        load_model(f"hf:{tmp_path}/absent")
    with pytest.raises(SparcEvalError, match="is a file; hf: reads a folder made by save_pretrained"):
        load_model(f"hf:{folders['clip'] / 'config.json'}")


def _pickled(folder: Path, dst: Path) -> Path:
    from safetensors.torch import load_file

    out = _copy(folder, dst)
    torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    return out


def test_pickled_weights_need_the_trust_flag(folders, models, tmp_path):
    folder = _pickled(folders["clip"], tmp_path / "clip-bin")
    with pytest.raises(SparcEvalError, match="holds only pickled weights \\(pytorch_model.bin\\), which can run code"):
        load_model(f"hf:{folder}")
    trusted = load_model(f"hf:{folder}", trust_pickle=True)
    for (name, a), (_, b) in zip(trusted.model.state_dict().items(), models["clip"].model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_cli_bad_input_is_one_line_exit_2(folders, tmp_path):
    folder = _pickled(folders["siglip"], tmp_path / "siglip-bin")
    result = run_cli(
        "run", "--task", "synth-cls", "--ckpt", f"hf:{folder}", "--out", tmp_path / "out", "--data-dir", tmp_path / "data"
    )
    assert_one_line_error(result, str(folder), "pickled weights", "--trust-pickle")
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()

"""open_clip's own reference forms: `openclip:local-dir:PATH`, `openclip:hf-hub:ORG/NAME`, named tags in the record.

Expected values come from open_clip called directly on the same folder (`create_model_and_transforms`,
`get_tokenizer`), never from sparc-eval's own code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from hf_fixtures import OPENCLIP_CFG, save_tiny_openclip
from PIL import Image
from safetensors.torch import load_file, save_file

from sparc_eval import load_model
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file
from sparc_eval.models.openclip_model import MASKCLIP_DENSE


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_openclip(tmp_path_factory.mktemp("oc") / "tiny-openclip")


def _reference(folder: Path):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def _images() -> list[Image.Image]:
    g = torch.Generator().manual_seed(1)
    return [
        Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())
        for w, h in [(40, 50), (64, 64), (33, 21)]
    ]


TEXTS = ["a small red circle.", "Two BLUE squares, top left!", "a"]


def test_local_dir_is_what_open_clip_builds_from_it(folder):
    ours = load_model(f"openclip:local-dir:{folder}")
    reference, preprocess, tokenizer = _reference(folder)
    images = _images()
    pixels = torch.stack([preprocess(im) for im in images])
    assert torch.equal(torch.stack([ours.preprocess(im) for im in images]), pixels)
    # The folder's preprocess_cfg is in force: open_clip's default preprocessing gives other pixels.
    from open_clip.transform import PreprocessCfg, image_transform_v2

    default = image_transform_v2(PreprocessCfg(size=OPENCLIP_CFG["vision_cfg"]["image_size"]), is_train=False)
    assert not torch.allclose(default(images[0]), pixels[0])
    tokens = tokenizer(TEXTS)
    assert torch.equal(ours.tokenize(TEXTS), tokens)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(pixels), reference.encode_image(pixels, normalize=True), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(tokens), reference.encode_text(tokens, normalize=True), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.logit_scale, reference.logit_scale.exp())
        # MaskCLIP dense path by hand on open_clip's own modules.
        visual = reference.visual
        x = visual.transformer(visual._embeds(pixels))
        torch.testing.assert_close(ours.encode_image_dense(pixels)[0], visual.ln_post(x)[:, 1:] @ visual.proj)
    d = ours.describe()
    assert d["ref"] == f"openclip:local-dir:{folder}" and d["weights"] == "open_clip_model.safetensors"
    assert d["files"] == {
        "open_clip_config.json": sha256_file(folder / "open_clip_config.json"),
        "open_clip_model.safetensors": sha256_file(folder / "open_clip_model.safetensors"),
    }
    assert d["dense_heads"] == {"global": MASKCLIP_DENSE, "local": MASKCLIP_DENSE}


def test_hash_covers_the_config(folder, tmp_path):
    """Same weights, other preprocessing: other numbers, so another hash (results are keyed by it)."""
    other = shutil.copytree(folder, tmp_path / "other-mean")
    config = json.loads((other / "open_clip_config.json").read_text())
    config["preprocess_cfg"]["mean"] = [0.48, 0.45, 0.4]
    (other / "open_clip_config.json").write_text(json.dumps(config))
    a, b = load_model(f"openclip:local-dir:{folder}"), load_model(f"openclip:local-dir:{other}")
    assert a.describe()["sha256"] != b.describe()["sha256"]
    assert a.describe()["files"]["open_clip_model.safetensors"] == b.describe()["files"]["open_clip_model.safetensors"]


def test_hub_form_is_fetched_and_its_commit_recorded(folder, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "hub" / "snapshots" / "feedbeef"
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision))
        shutil.copytree(folder, snapshot, dirs_exist_ok=True)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("openclip:hf-hub:someorg/tiny-openclip")
    d = model.describe()
    assert calls == [("someorg/tiny-openclip", None)]
    assert d["ref"] == "openclip:hf-hub:someorg/tiny-openclip"
    assert d["hub"] == {"repo": "someorg/tiny-openclip", "revision": "main", "commit": "feedbeef"}
    reference, _, _ = _reference(folder)
    for (name, a), (_, b) in zip(model.clip.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_hub_form_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SparcEvalError) as err:
        load_model("openclip:hf-hub:no-such-org-h6/no-such-model")
    message = str(err.value)
    assert "could not fetch open_clip Hub repository 'no-such-org-h6/no-such-model'" in message
    assert "pass openclip:local-dir:DIR" in message and "\n" not in message


def test_named_pretrained_tag_is_recorded(folder, tmp_path, monkeypatch):
    """A tag resolves to its weights and preprocessing, and the record names the tag (the download is faked)."""
    from sparc_eval.models import loaders

    arch = "sparc-eval-sources-test-vit"
    (tmp_path / f"{arch}.json").write_text(json.dumps(OPENCLIP_CFG))
    open_clip.add_model_config(tmp_path / f"{arch}.json")
    tag_cfg = {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3]}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda a, t: dict(tag_cfg) if (a, t) == (arch, "sometag") else {})
    monkeypatch.setattr(loaders, "_download_tag", lambda a, t, cfg: folder / "open_clip_model.safetensors")
    model = load_model(f"openclip:{arch}@sometag")
    d = model.describe()
    assert d["pretrained"] == "sometag" and d["ref"] == f"openclip:{arch}@sometag"
    assert d["sha256"] == sha256_file(folder / "open_clip_model.safetensors")
    assert model.clip.visual.preprocess_cfg["mean"] == tag_cfg["mean"]
    assert "pretrained" not in load_model(f"openclip:{arch}").describe()


# ------------------------------------------------------------------------------------------ tasks


def _plain(folder: Path, images: list[Image.Image], texts: list[str]):
    model, preprocess, tokenizer = _reference(folder)
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        text = model.encode_text(tokenizer(texts), normalize=True)
    return image.double(), text.double()


def _rank(scores: torch.Tensor, positives: list[int]) -> int:
    best = scores[positives].max()
    others = torch.ones(len(scores), dtype=torch.bool)
    others[positives] = False
    return 1 + int((scores[others] >= best).sum())


def _samples(out: Path, record: dict) -> list[dict]:
    [path] = list(out.glob(f"*/{record['samples_file']}"))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_synth_tasks_match_plain_open_clip_scoring(folder, synth_root, synth_data_dir, tmp_path):
    limit, out = 12, tmp_path / "results"
    result = run_cli(
        "run", "--task", "synth-cls", "--task", "synth-retrieval", "--ckpt", f"openclip:local-dir:{folder}",
        "--limit", str(limit), "--data-dir", synth_data_dir, "--out", out, "--num-workers", "0", "--no-cache", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    cls, ret = json.loads(result.stdout)

    names = [n for n in (synth_root / "imagefolder" / "classnames.txt").read_text().split("\n") if n]
    templates = [t for t in (synth_root / "imagefolder" / "templates.txt").read_text().split("\n") if t]
    val = synth_root / "imagefolder" / "val"
    items = [(p, names.index(d.name.replace("_", " "))) for d in sorted(val.iterdir()) for p in sorted(d.iterdir())][:limit]
    image, text = _plain(
        folder, [Image.open(p).convert("RGB") for p, _ in items], [t.format(n) for n in names for t in templates]
    )
    classes = F.normalize(text.reshape(len(names), len(templates), -1).mean(1), dim=-1)
    ranks = [_rank(s, [label]) for s, (_, label) in zip(image @ classes.T, items)]
    assert [s["rank"] for s in _samples(out, cls)] == ranks
    assert cls["metrics"]["top1"]["value"] == pytest.approx(sum(r == 1 for r in ranks) / limit, abs=1e-12)
    assert cls["metrics"]["top5"]["value"] == pytest.approx(sum(r <= 5 for r in ranks) / limit, abs=1e-12)

    entries = [
        e
        for e in json.loads((synth_root / "karpathy" / "dataset_synthscenes.json").read_text())["images"]
        if e["split"] == "test"
    ]
    entries = entries[:limit]
    captions = [(i, s["raw"].strip()) for i, e in enumerate(entries) for s in e["sentences"]]
    images = [Image.open(synth_root / e["filepath"] / e["filename"]).convert("RGB") for e in entries]
    image, text = _plain(folder, images, [c for _, c in captions])
    sims = image @ text.T
    image_ranks = [_rank(sims[i], [j for j, (o, _) in enumerate(captions) if o == i]) for i in range(limit)]
    text_ranks = [_rank(sims[:, j], [o]) for j, (o, _) in enumerate(captions)]
    samples = _samples(out, ret)
    assert [s["rank"] for s in samples if s["kind"] == "image"] == image_ranks
    assert [s["rank"] for s in samples if s["kind"] == "caption"] == text_ranks
    for k in (1, 5, 10):
        assert ret["metrics"][f"i2t_r{k}"]["value"] == pytest.approx(sum(r <= k for r in image_ranks) / limit, abs=1e-12)
        assert ret["metrics"][f"t2i_r{k}"]["value"] == pytest.approx(sum(r <= k for r in text_ranks) / len(text_ranks), abs=1e-12)
    assert cls["checkpoint"]["source"] == "open_clip" and cls["checkpoint"]["weights"] == "open_clip_model.safetensors"


# ------------------------------------------------------------------------------------------ bad input


def _marked_tensor(marker: str, value: float) -> torch.Tensor:
    os.mkdir(marker)
    return torch.tensor(value)


class _TensorPayload:
    def __init__(self, marker, value):
        self.marker, self.value = str(marker), value

    def __reduce__(self):
        return (_marked_tensor, (self.marker, self.value))


def test_pickled_weights_with_code_are_refused_unless_trusted(folder, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "open_clip_config.json", pickled)
    state = load_file(folder / "open_clip_model.safetensors")
    marker = tmp_path / "code-ran"
    torch.save({**state, "logit_scale": _TensorPayload(marker, 2.0)}, pickled / "open_clip_pytorch_model.bin")
    with pytest.raises(SparcEvalError, match="refusing to load .*open_clip_pytorch_model.bin: unpickling it would call"):
        load_model(f"openclip:local-dir:{pickled}")
    assert not marker.exists()
    model = load_model(f"openclip:local-dir:{pickled}", trust_pickle=True)
    assert marker.exists() and float(model.logit_scale.detach()) == pytest.approx(torch.tensor(2.0).exp().item())
    # A plain pickle of tensors needs no trust (torch's weights-only unpickler runs no code), as for openclip:ARCH@FILE.
    (pickled / "open_clip_pytorch_model.bin").unlink()
    torch.save(state, pickled / "open_clip_pytorch_model.bin")
    assert load_model(f"openclip:local-dir:{pickled}").describe()["weights"] == "open_clip_pytorch_model.bin"


def _with_config(tmp_path: Path, folder: Path, edit) -> Path:
    out = shutil.copytree(folder, tmp_path / "edited")
    config = json.loads((out / "open_clip_config.json").read_text())
    edit(config)
    (out / "open_clip_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda tmp, f: tmp / "absent", "does not exist or is not a folder"),
        (
            lambda tmp, f: (tmp / "empty").mkdir() or tmp / "empty",
            "is not an open_clip local-dir folder (it has no open_clip_config.json)",
        ),
        (lambda tmp, f: _with_config(tmp, f, lambda c: c.pop("model_cfg")), "has no model_cfg object"),
        (
            lambda tmp, f: _with_config(
                tmp, f, lambda c: c["model_cfg"]["vision_cfg"].update(timm_model_name="vit_base_patch16_224")
            ),
            "has no plain ViT image tower",
        ),
        (
            lambda tmp, f: (
                (shutil.copytree(f, tmp / "no-weights") / "open_clip_model.safetensors").unlink() or tmp / "no-weights"
            ),
            "has open_clip_config.json but no weights",
        ),
    ],
)
def test_bad_local_dirs_are_one_line(folder, tmp_path, make, needle):
    path = make(tmp_path, folder)
    with pytest.raises(SparcEvalError) as err:
        load_model(f"openclip:local-dir:{path}")
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_weights_of_another_architecture_in_a_local_dir(folder, tmp_path):
    out = shutil.copytree(folder, tmp_path / "wider")
    state = load_file(out / "open_clip_model.safetensors")
    state["text_projection"] = torch.zeros(32, 64)
    save_file(state, str(out / "open_clip_model.safetensors"))
    with pytest.raises(SparcEvalError, match="tensor text_projection has shape \\[32, 64\\]"):
        load_model(f"openclip:local-dir:{out}")


def test_empty_local_dir_reference():
    with pytest.raises(SparcEvalError, match="openclip:local-dir: names no folder"):
        load_model("openclip:local-dir:")

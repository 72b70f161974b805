"""`load_model` for open_clip references: seeded random init, local weight files, tags offline, and pickle safety."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sparc_eval import load_model
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file
from sparc_eval.models.contract import ImageTextModel
from sparc_eval.models.loaders import LOADERS
from sparc_eval.models.openclip_model import MASKCLIP_DENSE

ARCH = "sparc-eval-test-vit"  # a small open_clip config registered for these tests only


@pytest.fixture(scope="module", autouse=True)
def small_arch(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("oc") / f"{ARCH}.json"
    path.write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(path)


@pytest.fixture(scope="module")
def random_model():
    return load_model(f"openclip:{ARCH}")


def test_random_init_is_seeded_and_hashed(random_model):
    again = load_model(f"openclip:{ARCH}")
    for (name, a), (_, b) in zip(random_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    d = random_model.describe()
    assert d["ref"] == f"openclip:{ARCH}" and len(d["sha256"]) == 64
    assert d["sha256"] == again.describe()["sha256"]
    assert d["dense_heads"] == {"global": MASKCLIP_DENSE, "local": MASKCLIP_DENSE}


def test_contract_and_maskclip_dense_path(random_model):
    m = random_model
    assert isinstance(m, ImageTextModel) and not m.training
    images = torch.randn(2, 3, 32, 32)
    tokens = m.tokenize(["a red dog", "b"])
    with torch.no_grad():
        dense, grid = m.encode_image_dense(images)
        assert dense.shape == (2, 16, 32) and grid == (4, 4)
        # MaskCLIP: patch tokens through ln_post and proj, the same maps that make the pooled embedding.
        visual = m.clip.visual
        x = visual.transformer(visual._embeds(images))
        torch.testing.assert_close(dense, visual.ln_post(x)[:, 1:] @ visual.proj)
        torch.testing.assert_close(
            m.encode_image(images), torch.nn.functional.normalize(visual.ln_post(x)[:, 0] @ visual.proj, dim=-1)
        )
        torch.testing.assert_close(m.encode_image_dense(images, head="local")[0], dense)
        text_dense, mask = m.encode_text_dense(tokens)
        assert mask.sum(1).tolist() == [3, 1]
        # The global text embedding is the end-marker token's dense embedding, normalised.
        eot = tokens.argmax(1)
        torch.testing.assert_close(m.encode_text(tokens), torch.nn.functional.normalize(text_dense[torch.arange(2), eot], dim=-1))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_file(random_model, tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(9)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in random_model.clip.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DDP-style names
    m = load_model(f"openclip:{ARCH}@{path}")
    for k, v in state.items():
        assert torch.equal(m.clip.state_dict()[k], v), k
    assert m.describe()["sha256"] == sha256_file(path)
    assert m.describe()["ref"] == f"openclip:{ARCH}@{path}"


class _Payload:
    """Unpickling this runs os.mkdir(marker): what a malicious checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_needing_code_is_refused_unless_trusted(random_model, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": random_model.clip.state_dict(), "meta": _Payload(marker)}, path)
    with pytest.raises(SparcEvalError) as err:
        load_model(f"openclip:{ARCH}@{path}")
    assert f"refusing to load {path}: unpickling it would call posix.mkdir" in str(err.value) and "trust_pickle=True" in str(
        err.value
    )
    assert not marker.exists()
    # The same file with trust: the payload runs (so the test above would catch a loader that unpickles freely).
    m = load_model(f"openclip:{ARCH}@{path}", trust_pickle=True)
    assert marker.exists()
    assert m.describe()["sha256"] == sha256_file(path)


def _marked_tensor(marker: str, value: float) -> torch.Tensor:
    os.mkdir(marker)
    return torch.tensor(value)


class _TensorPayload:
    """Unpickles into a tensor, making `marker` on the way: a weights file whose loading runs code."""

    def __init__(self, marker, value):
        self.marker, self.value = str(marker), value

    def __reduce__(self):
        return (_marked_tensor, (self.marker, self.value))


def test_hf_pickle_needing_code_is_refused_unless_trusted(tmp_path):
    pytest.importorskip("transformers")
    from hf_fixtures import save_tiny_clip
    from safetensors.torch import load_file

    folder = save_tiny_clip(tmp_path / "clip")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({**state, "logit_scale": _TensorPayload(marker, 1.5)}, folder / "pytorch_model.bin")
    with pytest.raises(SparcEvalError) as err:
        load_model(f"hf:{folder}")
    assert f"folder {folder} holds only pickled weights (pytorch_model.bin)" in str(err.value) and "--trust-pickle" in str(
        err.value
    )
    assert not marker.exists()
    # With trust the payload runs (so the check above would catch a loader that unpickles before refusing).
    m = load_model(f"hf:{folder}", trust_pickle=True)
    assert marker.exists()
    assert float(m.logit_scale.detach()) == pytest.approx(torch.tensor(1.5).exp().item())


def test_weights_of_another_architecture(tmp_path):
    from safetensors.torch import save_file

    bigger = {
        k: torch.zeros(*v.shape[:-1], v.shape[-1] * 2) if k == "text_projection" else v
        for k, v in load_model(f"openclip:{ARCH}").clip.state_dict().items()
    }
    path = tmp_path / "other.safetensors"
    save_file(bigger, str(path))
    with pytest.raises(
        SparcEvalError, match=f"does not fit architecture open_clip {ARCH}: tensor text_projection has shape \\[32, 64\\]"
    ):
        load_model(f"openclip:{ARCH}@{path}")


@pytest.mark.parametrize(
    "ref,needle",
    [
        ("openclip:ViT-B-32@laion2b_s34b_b79k", "could not fetch open_clip weights ViT-B-32@laion2b_s34b_b79k"),
        ("openclip:no-such-arch", "unknown open_clip architecture 'no-such-arch'"),
        (f"openclip:{ARCH}@no-such-tag", "is neither a weights file nor a pretrained tag"),
        (f"openclip:{ARCH}@/nonexistent/w.safetensors", "weights file /nonexistent/w.safetensors does not exist"),
        ("openclip:RN50", "has no plain ViT image tower"),
        ("openclip:roberta-ViT-B-32", "only open_clip's BPE text transformer"),
    ],
)
def test_openclip_reference_errors(ref, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SparcEvalError) as err:
        load_model(ref)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_weight_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"definitely not a torch file")
    with pytest.raises(SparcEvalError, match="is not a readable torch weights file"):
        load_model(f"openclip:{ARCH}@{tmp_path / 'junk.pt'}")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(SparcEvalError, match="does not hold a state dict of named tensors"):
        load_model(f"openclip:{ARCH}@{tmp_path / 'list.pt'}")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10")
    with pytest.raises(SparcEvalError, match="is not a readable safetensors file"):
        load_model(f"openclip:{ARCH}@{tmp_path / 'cut.safetensors'}")


def test_a_new_source_is_one_registered_function(random_model):
    def _load(spec, *, trust_pickle):
        assert spec == "anything" and trust_pickle is False
        return random_model

    with LOADERS.registered("test-source", _load):
        assert load_model("test-source:anything") is random_model
        with pytest.raises(ValueError, match="already registered"):
            with LOADERS.registered("test-source", _load):
                pass
    with pytest.raises(SparcEvalError, match="unknown checkpoint reference 'test-source:anything'"):
        load_model("test-source:anything")

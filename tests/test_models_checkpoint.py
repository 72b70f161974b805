"""Checkpoint folders: atomic writes, exact round trips, and one-line errors for every way a checkpoint can be bad."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sparc_eval import load_model
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file
from sparc_eval.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, atomic_folder, load_checkpoint, save_checkpoint
from sparc_eval.models.sparc import create_model

SMALL = {"embed_dim": 32, "vision_cfg": {"width": 64, "layers": 1}, "text_cfg": {"width": 64, "layers": 1}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(3)
    model = create_model("tiny", **SMALL).eval()
    folder = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "small", objective={"name": "sparc"}, training={"seed": 3})
    return model, folder


def _copy(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved[1], folder)
    return folder


def test_round_trip_is_exact(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = load_model(str(folder))
    assert not loaded.training
    images = torch.randn(2, 3, 64, 64)
    tokens = model.tokenize(["a red circle", "a blue star"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode_text_dense(tokens)[0], model.encode_text_dense(tokens)[0], rtol=0, atol=0)
    assert loaded.logit_scale.item() == model.logit_scale.item()
    d = loaded.describe()
    assert d["ref"] == str(folder) and d["sha256"] == sha256_file(folder / WEIGHTS_FILE)
    assert d["objective"] == {"name": "sparc"}


def test_config_records_full_tower_configs(saved):
    config = json.loads((saved[1] / CONFIG_FILE).read_text())
    assert config["format"] == "sparc-eval-checkpoint" and config["training"] == {"seed": 3}
    model_cfg = config["model"]
    assert model_cfg["vision_cfg"]["width"] == 64 and model_cfg["vision_cfg"]["patch_size"] == 8
    assert "ls_init_value" in model_cfg["vision_cfg"] and "pool_type" in model_cfg["text_cfg"]  # every open_clip field
    assert model_cfg["tokenizer"] == {"kind": "open_clip.SimpleTokenizer", "context_length": 32}
    assert model_cfg["preprocess"]["size"] == 64


def test_atomic_folder_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(saved):
    with pytest.raises(SparcEvalError, match="already exists"):
        save_checkpoint(saved[0], saved[1])


@pytest.mark.parametrize("cut", [0.5, 0.001])
def test_truncated_weights(saved, tmp_path, cut):
    folder = _copy(saved, tmp_path)
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: max(1, int(len(data) * cut))])
    with pytest.raises(SparcEvalError, match=f"{WEIGHTS_FILE} is not a readable safetensors file"):
        load_checkpoint(folder)


def test_corrupt_weights(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 8 + b"not a header")
    with pytest.raises(SparcEvalError, match="not a readable safetensors file"):
        load_checkpoint(folder)


def test_weights_of_another_architecture(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    other = create_model("tiny", embed_dim=48, vision_cfg={"width": 64, "layers": 1}, text_cfg={"width": 64, "layers": 1})
    save_checkpoint(other, tmp_path / "other")
    shutil.copy(tmp_path / "other" / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    with pytest.raises(SparcEvalError) as err:
        load_checkpoint(folder)
    assert "does not fit architecture tiny" in str(
        err.value
    ) and "g_v.weight has shape [48, 64] but the model expects [32, 64]" in str(err.value)


def test_missing_and_unexpected_tensors(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(saved, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    save_file({k: v for k, v in tensors.items() if k != "h_v.0.bias"}, str(folder / WEIGHTS_FILE))
    with pytest.raises(SparcEvalError, match="lacks tensor h_v.0.bias"):
        load_checkpoint(folder)
    save_file({**tensors, "extra": torch.zeros(1)}, str(folder / WEIGHTS_FILE))
    with pytest.raises(SparcEvalError, match="has tensor extra the model lacks"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda f: (f / CONFIG_FILE).unlink(), "has no config.json"),
        (lambda f: (f / CONFIG_FILE).write_text("{not json"), "config.json is not valid JSON"),
        (lambda f: (f / CONFIG_FILE).write_text('{"format": "other"}'), "is not a sparc-eval checkpoint config"),
        (lambda f: (f / WEIGHTS_FILE).unlink(), "model.safetensors does not exist"),
        (lambda f: _edit_config(f, arch="huge"), "config.json: unknown architecture 'huge'"),
    ],
)
def test_bad_folders(saved, tmp_path, damage, needle):
    folder = _copy(saved, tmp_path)
    damage(folder)
    with pytest.raises(SparcEvalError, match=needle):
        load_model(str(folder))


def _edit_config(folder, **model):
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["model"].update(model)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def test_missing_or_file_reference(tmp_path):
    with pytest.raises(SparcEvalError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(SparcEvalError, match="is not a folder"):
        load_model(str(tmp_path / "file.bin"))
    with pytest.raises(SparcEvalError, match="unknown checkpoint reference 'hf-hub:org/model'"):
        load_model("hf-hub:org/model")

"""Feature cache: cached and uncached runs give identical records; what changes the features invalidates them;
a damaged entry is recomputed, never trusted; --no-cache bypasses it."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from sparc_eval.evaluation import run_evaluation
from sparc_eval.models.sparc import SparcModel
from sparc_eval.results.record import load_samples
from sparc_eval.tasks.card import load_card
from sparc_eval.tasks.feature_cache import CACHE_ENV, FORMAT

LIMIT = 8


@pytest.fixture()
def tree(synth_root, tmp_path) -> Path:
    """A private copy of the small SynthScenes tree (its files get rewritten) and a data dir that every synth card reads it from."""
    copy = tmp_path / "tree"
    shutil.copytree(synth_root, copy)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("synth-cls", "synth-retrieval"):
        link = load_card(name).synthscenes_dir(data_dir)
        if not link.exists():
            link.symlink_to(copy, target_is_directory=True)
    return data_dir


@pytest.fixture()
def calls(monkeypatch) -> Counter:
    """How many images and texts the towers encoded (the model class's encoders, counted)."""
    counts: Counter = Counter()
    for name in ("encode_image", "encode_text"):
        original = getattr(SparcModel, name)

        def counted(self, x, _original=original, _name=name):
            counts[_name] += len(x)
            return _original(self, x)

        monkeypatch.setattr(SparcModel, name, counted)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    return counts


def _run(ckpt, task, data_dir, out, **kw):
    evaluation = run_evaluation(
        str(ckpt), task, out=out, data_dir=data_dir, limit=LIMIT, batch_size=4, num_workers=0, force=True, **kw
    )
    return evaluation.record, load_samples(evaluation.path, evaluation.record)


def _entries(out: Path) -> list[Path]:
    return sorted((out / "cache" / "features").rglob("*.safetensors"))


@pytest.mark.parametrize("task", ["synth-cls", "synth-retrieval"])
def test_cached_and_uncached_records_are_identical_and_the_cache_skips_the_towers(task, tiny_sparc_ckpt, tree, tmp_path, calls):
    out = tmp_path / "results"
    uncached = _run(tiny_sparc_ckpt, task, tree, tmp_path / "plain", cache=False)
    assert not (tmp_path / "plain" / "cache" / "features").exists()  # --no-cache writes nothing
    assert calls["encode_image"] == LIMIT and calls["encode_text"] > 0
    first = _run(tiny_sparc_ckpt, task, tree, out)
    assert len(_entries(out)) == 2  # the images and the texts (class prompts or captions)
    calls.clear()
    second = _run(tiny_sparc_ckpt, task, tree, out)
    assert calls == Counter()  # neither tower ran: both came from the cache
    for record, samples in (first, second):
        assert record.metric_values() == uncached[0].metric_values()
        assert samples == uncached[1]


def test_a_changed_checkpoint_or_image_file_invalidates_the_entries(tiny_sparc_ckpt, tree, tmp_path, calls):
    from sparc_eval.data.registry import open_dataset
    from sparc_eval.models.checkpoint import save_checkpoint
    from sparc_eval.models.sparc import create_model

    out = tmp_path / "results"
    _run(tiny_sparc_ckpt, "synth-cls", tree, out)
    calls.clear()
    torch.manual_seed(1)
    other = save_checkpoint(create_model("tiny"), tmp_path / "other")
    _run(other, "synth-cls", tree, out)
    assert calls["encode_image"] == LIMIT and calls["encode_text"] > 0  # another model: nothing reused
    assert len({p.parent for p in _entries(out)}) == 2  # one folder of entries per model

    # Rewrite one evaluated image (another picture of the same size): the image entry is stale, the prompts are not.
    paths = open_dataset("imagefolder", load_card("synth-cls").synthscenes_dir(tree) / "imagefolder", "val").paths
    _run(tiny_sparc_ckpt, "synth-cls", tree, out)
    shutil.copyfile(paths[LIMIT], paths[0])  # the first evaluated image becomes one from outside the limit
    calls.clear()
    after = _run(tiny_sparc_ckpt, "synth-cls", tree, out)
    assert calls["encode_image"] == LIMIT and calls["encode_text"] == 0
    fresh = _run(tiny_sparc_ckpt, "synth-cls", tree, tmp_path / "fresh", cache=False)
    assert after[1] == fresh[1]  # the new image's scores, not the cached old ones


def test_a_damaged_entry_is_recomputed_not_trusted(tiny_sparc_ckpt, tree, tmp_path, calls):
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "results"
    clean = _run(tiny_sparc_ckpt, "synth-cls", tree, out)
    image_entry = next(p for p in _entries(out) if p.name.startswith("image-"))
    for damage in ("checksum", "truncated", "other key"):
        raw = image_entry.read_bytes()
        if damage == "checksum":  # flipped bytes in the tensor data: the header still parses
            image_entry.write_bytes(raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:]))
        elif damage == "truncated":
            image_entry.write_bytes(raw[: len(raw) // 2])
        else:  # a well-formed file whose key names other features (and whose values differ)
            with safe_open(str(image_entry), framework="pt") as f:
                meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
            save_file(
                {k: v + 1 for k, v in tensors.items()}, str(image_entry), metadata={**meta, "key": "0" * 64, "format": FORMAT}
            )
        calls.clear()
        again = _run(tiny_sparc_ckpt, "synth-cls", tree, out)
        assert calls["encode_image"] == LIMIT and calls["encode_text"] == 0, damage
        assert again[0].metric_values() == clean[0].metric_values() and again[1] == clean[1], damage
    calls.clear()
    _run(tiny_sparc_ckpt, "synth-cls", tree, out)
    assert calls == Counter()  # the recomputed entry replaced the damaged one

"""Webdataset shards: `data shards` round-trips (checked with the webdataset library itself), `data check`, the
reader (our shards and CLIP_benchmark's layout) scoring like the source format, training from shards by
(seed, step), and one-line errors for corrupt, truncated or mismatched shards."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from micro_training import MICRO, train_interrupted
from PIL import Image

from sparc_eval.cli import main
from sparc_eval.data.registry import open_dataset
from sparc_eval.data.webdataset import index_shard, read_member
from sparc_eval.errors import SparcEvalError
from sparc_eval.models.sparc import PRESETS
from sparc_eval.train.loop import TrainConfig, periodic_dir, train
from sparc_eval.train.shards import SHUFFLE_SHARDS, ShardBatches

wds = pytest.importorskip("webdataset")

LOSS_KEYS = ("step", "lr", "loss", "global", "fine", "fine_matched", "fine_mismatched", "align_nonzero", "logit_scale")


@pytest.fixture(autouse=True)
def micro_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", MICRO)


@pytest.fixture(scope="module")
def pair_shards(synth_root, tmp_path_factory) -> Path:
    """The small SynthScenes training pairs (96 images) as shards of 10 samples, written by the CLI."""
    out = tmp_path_factory.mktemp("shards") / "pairs"
    result = run_cli("data", "shards", synth_root, "--out", out, "--shard-size", 10)
    assert result.code == 0, result.stderr
    assert f"--data '{out}/{{000000..000009}}.tar'" in result.stdout
    return out


def _pattern(folder: Path) -> str:
    n = len(list(folder.glob("*.tar")))
    return f"{folder}/{{000000..{n - 1:06d}}}.tar"


def _losses(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in LOSS_KEYS if k in r} for r in rows]


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="micro", steps=4, batch_size=8, warmup=2, log_every=1)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------ writing


def test_shards_round_trip_through_the_webdataset_library(synth_root, pair_shards):
    """Read back with webdataset's own pipeline: one sample per distinct image, its bytes as on disk, all its captions."""
    expected: dict[str, list[str]] = defaultdict(list)
    for line in (synth_root / "pairs" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        expected[os.path.normpath(synth_root / "pairs" / row["image"])].append(row["caption"])
    manifest = json.loads((pair_shards / "MANIFEST.json").read_text())["webdataset"]
    assert manifest["kind"] == "pairs" and manifest["samples"] == len(expected) == 96
    assert [s["samples"] for s in manifest["shards"]] == [10] * 9 + [6]
    seen = {}
    for sample in wds.WebDataset(_pattern(pair_shards), shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        source = os.path.normpath(synth_root / meta["source"])  # relative to the source named on the command line
        assert sample["png"] == Path(source).read_bytes()
        seen[source] = sample["txt"].decode().splitlines()
    assert seen == dict(expected)


def test_shards_are_byte_identical_across_writes(synth_root, pair_shards, tmp_path):
    from sparc_eval.data.shard_writer import write_shards

    again = write_shards(synth_root, tmp_path / "again", shard_size=10).out
    for shard in sorted(pair_shards.glob("*.tar")):
        assert (again / shard.name).read_bytes() == shard.read_bytes(), shard.name


def _in_process(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_data_check_passes_then_names_the_altered_shard(pair_shards, tmp_path, capsys):
    code, out, err = _in_process(capsys, "data", "check", pair_shards)
    assert code == 0, err
    assert "webdataset" in out and "96" in out
    copy = tmp_path / "copy"
    shutil.copytree(pair_shards, copy)
    data = bytearray((copy / "000003.tar").read_bytes())
    data[2000] ^= 0xFF
    (copy / "000003.tar").write_bytes(bytes(data))
    code, _, err = _in_process(capsys, "data", "check", copy)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "000003.tar does not match its md5" in err, err


def test_index_agrees_with_the_webdataset_library(tmp_path):
    """Our header index groups members exactly as webdataset does: metadata skipped, extensions lower-cased, a name
    without an extension ignored, multi-dot extensions kept whole."""
    shard = tmp_path / "odd.tar"
    members = [
        ("__meta__", b"x"),
        ("a/001.JPG", _png(1)),
        ("a/001.txt", b"one\ntwo"),
        ("a/001.seg.png", _png(2)),
        ("README", b"no extension"),
        ("002.png", _png(3)),
        ("002.cls", b"7"),
    ]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ours = index_shard(shard)
    theirs = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    assert [s.key for s in ours] == [t["__key__"] for t in theirs] == ["a/001", "002"]
    for sample, reference in zip(ours, theirs):
        assert set(sample.members) == {k for k in reference if not k.startswith("__")}
        for ext in sample.members:
            assert read_member(shard, sample, ext) == reference[ext]


# ------------------------------------------------------------------------------------------ reading for tasks


def _card(tmp_path: Path, name: str, runner: str, dataset: dict, params: dict | None = None) -> Path:
    import yaml

    card = {"name": name, "version": 1, "runner": runner, "description": f"{name} test card", "dataset": dataset}
    if params:
        card["params"] = params
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def _metrics(ckpt, card: Path, tmp_path) -> dict:
    from sparc_eval.evaluation import run_evaluation

    record = run_evaluation(str(ckpt), card, out=tmp_path / "results", data_dir=tmp_path, cache=False).record
    return {k: v.value for k, v in record.metrics.items()}


@pytest.mark.slow
def test_webdataset_cards_score_like_their_source_format(synth_root, tiny_sparc_ckpt, tmp_path):
    """Shards of the ImageFolder val split and of the Karpathy test split, read by `format: webdataset`, give the
    metrics the source readers give on the same checkpoint."""
    cls_shards, ret_shards = tmp_path / "cls-wds", tmp_path / "ret-wds"
    assert run_cli("data", "shards", synth_root / "imagefolder", "--split", "val", "--out", cls_shards).code == 0
    result = run_cli(
        "data", "shards", synth_root, "--format", "karpathy", "--split", "test",
        "--option", "annotation=karpathy/dataset_synthscenes.json", "--out", ret_shards, "--shard-size", 7,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    templates = str(synth_root / "imagefolder" / "templates.txt")
    source_cls = _card(
        tmp_path, "src-cls", "classification",
        {"format": "imagefolder", "root": str(synth_root / "imagefolder"), "split": "val", "classnames": "classnames.txt"},
        {"templates": templates},
    )  # fmt: skip
    wds_cls = _card(
        tmp_path,
        "wds-cls",
        "classification",
        {"format": "webdataset", "root": str(cls_shards), "split": "val"},
        {"templates": templates},
    )
    source_ret = _card(
        tmp_path, "src-ret", "retrieval",
        {"format": "karpathy", "root": str(synth_root), "split": "test", "annotation": "karpathy/dataset_synthscenes.json"},
    )  # fmt: skip
    wds_ret = _card(tmp_path, "wds-ret", "retrieval", {"format": "webdataset", "root": str(ret_shards), "split": "test"})
    assert _metrics(tiny_sparc_ckpt, wds_cls, tmp_path) == _metrics(tiny_sparc_ckpt, source_cls, tmp_path)
    assert _metrics(tiny_sparc_ckpt, wds_ret, tmp_path) == _metrics(tiny_sparc_ckpt, source_ret, tmp_path)


def _png(seed: int, size: int = 16) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_clip_benchmark_layout(tmp_path):
    """CLIP_benchmark's wds datasets: split folders with nshards.txt and 0.tar.., classnames.txt, templates with {c},
    dataset_type.txt; classification (webp + cls) and retrieval (txt, one caption per line)."""
    from sparc_eval.tasks.prompts import read_templates

    cls_root = tmp_path / "wds_cifar"
    (cls_root / "test").mkdir(parents=True)
    (cls_root / "classnames.txt").write_text("cat\ndog\nbird\n")
    (cls_root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    (cls_root / "test" / "nshards.txt").write_text("2")
    for shard in range(2):
        with wds.TarWriter(str(cls_root / "test" / f"{shard}.tar")) as sink:
            for i in range(3):
                sink.write({"__key__": f"s{shard * 3 + i:07d}", "webp": _webp(shard * 3 + i), "cls": (shard * 3 + i) % 3})
    dataset = open_dataset("webdataset", cls_root, "test")
    assert dataset.classnames == ["cat", "dog", "bird"] and dataset.targets == [0, 1, 2, 0, 1, 2]
    assert dataset[4]["image"].size == (16, 16) and dataset[4]["label"] == 1
    assert read_templates(cls_root / "zeroshot_classification_templates.txt") == ("a photo of a {}.", "a drawing of a {}.")

    ret_root = tmp_path / "wds_flickr"
    (ret_root / "test").mkdir(parents=True)
    (ret_root / "dataset_type.txt").write_text("retrieval\n")
    with wds.TarWriter(str(ret_root / "test" / "0.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"s{i:07d}", "jpg": _jpg(i), "txt": f"caption {i} a\ncaption {i} b"})
    dataset = open_dataset("webdataset", ret_root, "test")
    assert dataset.captions == [[f"caption {i} a", f"caption {i} b"] for i in range(3)]
    assert dataset[2]["captions"] == ["caption 2 a", "caption 2 b"] and dataset.captions_per_image == 2


def _webp(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_png(seed))).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def _jpg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_png(seed))).save(buffer, format="JPEG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ training from shards


def test_shard_batches_cover_each_epoch_once_without_repeats(pair_shards):
    batches = ShardBatches(_pattern(pair_shards), batch_size=16, seed=0, transform=lambda img: img)
    assert batches.batches_per_epoch == 96 // 16
    epoch = [r[:2] for step in range(6) for r in batches.rows(step)]
    assert len(set(epoch)) == 96  # every image once per epoch, so never twice in a batch
    assert batches.rows(7) == ShardBatches(_pattern(pair_shards), 16, 0, lambda img: img).rows(7)  # a function of (seed, step)
    assert batches.rows(0) != ShardBatches(_pattern(pair_shards), 16, 1, lambda img: img).rows(0)
    assert [r[:2] for r in batches.rows(0)] != [r[:2] for r in batches.rows(6)]  # epochs are reshuffled
    # 10 shards, SHUFFLE_SHARDS per group: a batch reads the shards of at most two groups.
    assert SHUFFLE_SHARDS < 10
    for step in range(12):
        assert len({shard for shard, _, _ in batches.rows(step)}) <= 2 * SHUFFLE_SHARDS


def test_training_from_shards_is_deterministic_and_resumes_exactly(pair_shards, tmp_path, monkeypatch):
    pattern = _pattern(pair_shards)
    straight = train(_cfg(pattern, tmp_path / "a"))
    assert _losses(straight) == _losses(train(_cfg(pattern, tmp_path / "b")))
    assert _losses(straight) == _losses(train(_cfg(pair_shards, tmp_path / "folder")))  # the folder names the same shards
    config = json.loads((straight / "config.json").read_text())["data"]
    assert config["n_shards"] == 10 and config["n_images"] == 96 and config["shards_sha256"]

    train_interrupted(monkeypatch, _cfg(pattern, tmp_path / "d", save_every=2, num_workers=2), after_steps=3)
    assert [p.name for p in periodic_dir(tmp_path / "d").iterdir()] == ["step_0000002"]
    resumed = train(_cfg(pattern, tmp_path / "d", save_every=2, resume=True, num_workers=2))
    assert _losses(resumed) == _losses(straight)

    # Other shards under the same pattern: the resume check refuses them.
    train_interrupted(monkeypatch, _cfg(pattern, tmp_path / "e", save_every=2), after_steps=3)
    assert periodic_dir(tmp_path / "e").is_dir()
    fewer = f"{pair_shards}/{{000000..000008}}.tar"
    with pytest.raises(SparcEvalError, match="its training data differs"):
        train(_cfg(fewer, tmp_path / "e", save_every=2, resume=True))


# ------------------------------------------------------------------------------------------ bad shards


def _broken_copy(pair_shards: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(pair_shards, copy)
    edit(copy / "000004.tar")
    return copy


def _cut_inside_member(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def _cut_at_member_boundary(path: Path) -> None:
    """Keep three whole samples: the file ends at a member boundary, without the end-of-archive blocks."""
    end = max(offset + size for offset, size in index_shard(path)[2].members.values())
    path.write_bytes(path.read_bytes()[: (end + 511) // 512 * 512])


def _not_a_tar(path: Path) -> None:
    path.write_bytes(b"\x89PNG not a tar at all" * 100)


def _corrupt_image(path: Path) -> None:
    samples = index_shard(path)
    offset, size = samples[1].members["png"]
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = b"\x00" * size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (_cut_inside_member, "000004.tar is not a readable tar file"),
        (_cut_at_member_boundary, "000004.tar is truncated"),
        (_not_a_tar, "000004.tar is not a readable tar file"),
    ],
)
def test_truncated_or_corrupt_shards_are_one_line(pair_shards, tmp_path, capsys, edit, needle):
    broken = _broken_copy(pair_shards, tmp_path, edit)
    for args in (
        ["data", "check", broken],
        ["train", "--data", _pattern(broken), "--arch", "micro", "--steps", "1", "--batch-size", "8", "--out", tmp_path / "run"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
        if args[0] == "train":
            assert needle in lines[0], lines[0]
        else:  # data check first compares md5s: the edited shard no longer matches
            assert "000004.tar" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_a_shard_with_fewer_samples_than_its_manifest_is_refused(pair_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(pair_shards, copy)
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    manifest["webdataset"]["shards"][4]["samples"] = 11
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    batches = ShardBatches(copy, 8, 0, lambda img: img)
    with pytest.raises(SparcEvalError, match="000004.tar holds 10 samples, its manifest says 11"):
        for step in range(batches.batches_per_epoch):
            batches.load(batches.rows(step))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_does_not_decode_is_one_line_naming_shard_and_sample(pair_shards, tmp_path, capsys, workers):
    """Also from a DataLoader worker process: one line, not the worker's traceback."""
    broken = _broken_copy(pair_shards, tmp_path, _corrupt_image)
    key = index_shard(broken / "000004.tar")[1].key
    args = ["train", "--data", _pattern(broken), "--arch", "micro", "--steps", "12", "--batch-size", "8", "--workers", workers]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*args, "--out", tmp_path / "run"]])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "000004.tar" in lines[0] and repr(key) in lines[0] and "image does not decode" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_missing_webdataset_library_is_one_line_naming_the_extra(pair_shards, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "webdataset", None)
    for args in (
        ["data", "shards", pair_shards, "--out", tmp_path / "x"],
        ["train", "--data", _pattern(pair_shards), "--out", tmp_path / "y"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "pip install 'sparc-eval[wds]'" in err and len(err.strip().splitlines()) == 1, err

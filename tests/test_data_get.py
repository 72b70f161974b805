"""`sparc-eval data get` against a loopback HTTP server serving tiny archives in the official names and layouts
(tests/official_fixtures.py): the card layouts it builds, the real cards running on them end to end, resumed
downloads, checksums, and archives that try to write outside their folder or explode."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import official_fixtures as fx
import pytest
import yaml
from PIL import Image

REAL_CARDS = [
    "coco-retrieval",
    "coco-kprecision",
    "coco-det",
    "coco-grounding",
    "lvis-det",
    "voc-seg",
    "voc21-seg",
    "context-seg",
    "sugarcrepe",
]
ALL_DOWNLOADABLE = ["coco2014", "coco2017", "karpathy", "voc2012", "pascal-context", "lvis", "sugarcrepe"]


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(capsys, *args) -> Result:
    """Run the sparc-eval CLI in this process (torch is imported once for the whole module)."""
    from sparc_eval.cli.main import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def one_line_error(result: Result, *needles: str) -> str:
    assert result.code == 2, (result.code, result.out, result.err)
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return fx.official_files()


@pytest.fixture(scope="module")
def served(files, tmp_path_factory):
    with fx.LoopbackServer(files) as server:
        sources = fx.sources_for(server.url, files, tmp_path_factory.mktemp("sources") / "sources.yaml")
        yield server, sources


@pytest.fixture(scope="module")
def fetched(served, tmp_path_factory) -> Path:
    """A data folder holding every downloadable dataset of the built-in cards, fetched with one `data get`."""
    from sparc_eval.cli.main import main

    _, sources = served
    root = tmp_path_factory.mktemp("fetched") / "data"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "get", *ALL_DOWNLOADABLE, "--root", str(root), "--sources", str(sources)])
    assert exit_info.value.code == 0
    return root


@pytest.fixture
def server(files):
    """A fresh server per test, for tests that cut connections or swap files."""
    with fx.LoopbackServer(files) as srv:
        yield srv


def _sources(srv, files, path: Path, **changes) -> Path:
    fx.sources_for(srv.url, files, path)
    if changes:
        raw = yaml.safe_load(path.read_text())
        for f in (f for ds in raw["datasets"].values() for f in ds.get("files", [])):
            f.update(changes.get(f["name"], {}))
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ layouts


def test_every_downloadable_dataset_lands_in_the_card_layouts(fetched, files):
    coco = fetched / "coco"
    assert sorted(p.name for p in (coco / "val2014").iterdir()) == [f"COCO_val2014_{i:012d}.jpg" for i in fx.COCO14["val2014"]]
    assert sorted(p.name for p in (coco / "train2017").iterdir()) == [f"{i:012d}.jpg" for i in fx.COCO17["train2017"]]
    assert {p.name for p in (coco / "annotations").iterdir()} == {
        "captions_val2014.json",
        "instances_val2014.json",
        *(f"{kind}_{split}2017.json" for kind in ("captions", "instances") for split in ("train", "val")),
    }  # the 2014 and 2017 annotation zips share annotations/
    with zipfile.ZipFile(io.BytesIO(files["caption_datasets.zip"])) as zf:
        assert (coco / "dataset_coco.json").read_bytes() == zf.read("dataset_coco.json")
        assert (fetched / "flickr30k/dataset_flickr30k.json").read_bytes() == zf.read("dataset_flickr30k.json")
    assert not (fetched / "dataset_flickr8k.json").exists()  # only the picked members are installed
    assert (fetched / "lvis/lvis_v1_val.json").is_file() and (fetched / "lvis/lvis_v1_train.json").is_file()
    for kind in fx.SUGARCREPE_TYPES:
        assert (fetched / f"sugar-crepe/data/{kind}.json").read_bytes() == files[f"{kind}.json"]
    voc = fetched / "VOCdevkit/VOC2012"
    assert (voc / "ImageSets/Segmentation/val.txt").read_text().split() == fx.VOC12["val"]
    assert (fetched / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt").read_text().split() == fx.VOC10["val"]
    # Downloads are removed once unpacked and no temporary folder is left anywhere.
    assert not (fetched / ".downloads").exists()
    assert not [p for p in fetched.rglob(".*")]


def test_pascal_context_labels_follow_mmsegmentation(fetched):
    """459-class ids map to 1..59 in mmseg's order, everything else to 0; the reader then names the classes."""
    from sparc_eval.data.registry import open_dataset

    for n, image_id in enumerate(fx.VOC10["train"] + fx.VOC10["val"]):
        label = np.array(Image.open(fetched / f"VOCdevkit/VOC2010/SegmentationClassContext/{image_id}.png"))
        expected = np.vectorize(fx.CONTEXT_LABELMAP_VALUES.get)(fx.context_label_map(n))
        assert label.dtype == np.uint8 and np.array_equal(label, expected)
    ds = open_dataset("voc", fetched / "VOCdevkit/VOC2010", "val", layout="context")
    item = ds[0]
    raw = fx.context_label_map(1)
    assert ds.classnames[int(item["label"][raw == 284][0])] == "person"
    assert ds.classnames[int(item["label"][raw == 2][0])] == "aeroplane"
    assert int(item["label"][raw == 1][0]) == 255  # accordion is not among the 59: ignored


def test_lvis_val_images_resolve_into_both_coco_folders(fetched):
    from sparc_eval.data.registry import open_dataset

    ds = open_dataset("lvis", fetched / "coco", "val", annotation="../lvis/lvis_v1_{split}.json")
    assert [Path(p).parent.name for p in ds.paths] == ["val2017", "train2017"]
    assert not (fetched / "lvis/images").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", REAL_CARDS)
def test_real_card_runs_on_what_data_get_fetched(task, fetched, tiny_sparc_ckpt, tmp_path, capsys):
    """data get -> data check --task -> run --limit 2, on the built-in card itself."""
    check = cli(capsys, "data", "check", "--task", task, "--data-dir", fetched)
    assert check.code == 0, check.out + check.err
    run = cli(
        capsys, "run", "--task", task, "--ckpt", tiny_sparc_ckpt, "--data-dir", fetched, "--out", tmp_path, "--limit", 2,
        "--num-workers", 0, "--json",
    )  # fmt: skip
    assert run.code == 0, run.out + run.err
    records = list(tmp_path.rglob(f"{task}-*.record.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["task"]["name"] == task and record["n_samples"] >= 1 and record["limit"] == 2


def test_a_second_get_does_nothing_and_force_fetches_again(fetched, served, capsys):
    server, sources = served
    before = len(server.state.requests)
    again = cli(capsys, "data", "get", "karpathy", "--root", fetched, "--sources", sources)
    assert again.code == 0 and "already in place" in again.out and len(server.state.requests) == before
    forced = cli(capsys, "data", "get", "karpathy", "--root", fetched, "--sources", sources, "--force")
    assert forced.code == 0 and "installed" in forced.out and len(server.state.requests) == before + 1


def test_keep_archives_keeps_the_verified_downloads(server, files, tmp_path, capsys):
    sources = _sources(server, files, tmp_path / "sources.yaml")
    root = tmp_path / "data"
    result = cli(capsys, "data", "get", "karpathy", "sugarcrepe", "--root", root, "--sources", sources, "--keep-archives")
    assert result.code == 0, result.err
    assert (root / ".downloads/caption_datasets.zip").read_bytes() == files["caption_datasets.zip"]
    assert (root / ".downloads/add_att.json").read_bytes() == (root / "sugar-crepe/data/add_att.json").read_bytes()


# ------------------------------------------------------------------------------ resuming, checksums


def test_an_interrupted_download_resumes_with_a_range_request(server, files, tmp_path, capsys):
    sources = _sources(server, files, tmp_path / "sources.yaml")
    root = tmp_path / "data"
    data = files["val2017.zip"]
    half = len(data) // 2
    server.state.drops["val2017.zip"] = [half]
    first = cli(capsys, "data", "get", "coco2017-val", "--root", root, "--sources", sources, "--retries", 0)
    one_line_error(first, "val2017.zip", "run the same command again to resume")
    assert (root / ".downloads/val2017.zip.part").read_bytes() == data[:half]
    assert [p.name for p in (root / ".downloads").iterdir()] == ["val2017.zip.part"]  # the partial file, nothing else
    assert not (root / "coco").exists()  # nothing unpacked from a partial file
    second = cli(capsys, "data", "get", "coco2017-val", "--root", root, "--sources", sources)
    assert second.code == 0, second.err
    assert server.ranges_asked("val2017.zip") == [f"bytes={half}-"]
    assert "sha256 verified" in second.out
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for i in fx.COCO17["val2017"]:
            assert (root / f"coco/val2017/{i:012d}.jpg").read_bytes() == zf.read(f"val2017/{i:012d}.jpg")
    assert not (root / ".downloads").exists()


def test_a_dropped_connection_is_resumed_within_one_run(server, files, tmp_path, capsys):
    sources = _sources(server, files, tmp_path / "sources.yaml")
    server.state.drops["caption_datasets.zip"] = [100, 300]
    result = cli(capsys, "data", "get", "karpathy", "--root", tmp_path / "data", "--sources", sources, "--retries", 2)
    assert result.code == 0, result.err
    assert server.ranges_asked("caption_datasets.zip") == ["bytes=100-", "bytes=400-"]
    assert (tmp_path / "data/coco/dataset_coco.json").is_file()


def test_a_server_that_ignores_ranges_is_read_again_from_the_start(server, files, tmp_path, capsys):
    sources = _sources(server, files, tmp_path / "sources.yaml")
    server.state.honour_ranges = False
    server.state.drops["caption_datasets.zip"] = [500]
    root = tmp_path / "data"
    assert cli(capsys, "data", "get", "karpathy", "--root", root, "--sources", sources, "--retries", 0).code == 2
    result = cli(capsys, "data", "get", "karpathy", "--root", root, "--sources", sources)
    assert result.code == 0, result.err
    with zipfile.ZipFile(io.BytesIO(files["caption_datasets.zip"])) as zf:
        assert (root / "coco/dataset_coco.json").read_bytes() == zf.read("dataset_coco.json")


def test_a_missing_file_on_the_server_is_one_line_and_leaves_nothing(server, files, tmp_path, capsys):
    sources = _sources(server, files, tmp_path / "sources.yaml")
    del server.state.files["val2017.zip"]
    before = tree(tmp_path)
    one_line_error(
        cli(capsys, "data", "get", "coco2017-val", "--root", tmp_path / "data", "--sources", sources), "val2017.zip", "HTTP 404"
    )
    assert tree(tmp_path) == before


def test_a_wrong_checksum_is_one_line_and_nothing_is_unpacked(server, files, tmp_path, capsys):
    wrong = hashlib.sha256(b"not the file").hexdigest()
    sources = _sources(server, files, tmp_path / "sources.yaml", **{"val2017.zip": {"sha256": wrong}})
    before = tree(tmp_path)
    result = cli(capsys, "data", "get", "coco2017-val", "--root", tmp_path / "data", "--sources", sources)
    one_line_error(result, "val2017.zip", "sha256", wrong, "nothing was unpacked")
    assert tree(tmp_path) == before  # no data folder, no download, no temporary folder


def test_a_size_the_server_contradicts_stops_before_downloading(server, files, tmp_path, capsys):
    sources = _sources(server, files, tmp_path / "sources.yaml", **{"val2017.zip": {"size": 12345}})
    result = cli(capsys, "data", "get", "coco2017-val", "--root", tmp_path / "data", "--sources", sources)
    one_line_error(result, "val2017.zip", "12345")
    assert not (tmp_path / "data/coco").exists()


def test_an_unverified_checksum_is_reported_but_only_the_size_is_enforced(server, files, tmp_path, capsys):
    wrong = hashlib.sha256(b"someone else's list").hexdigest()
    sources = _sources(server, files, tmp_path / "sources.yaml", **{"val2017.zip": {"sha256": wrong, "verified": False}})
    result = cli(capsys, "data", "get", "coco2017-val", "--root", tmp_path / "data", "--sources", sources)
    assert result.code == 0, result.err
    assert "verified size only" in result.out and "DIFFERS FROM the listed value" in result.out
    assert hashlib.sha256(files["val2017.zip"]).hexdigest() in result.out
    assert (tmp_path / "data/coco/val2017").is_dir()


# ------------------------------------------------------------------------------ hostile archives


def _zip_with(name: str, data: bytes = b"x", mode: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, data)
    return buf.getvalue()


def _tar_with(kind: str, name: str, target: str = "", data: bytes = b"x", gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        info = tarfile.TarInfo(name)
        if kind == "file":
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        else:
            info.type = {
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "device": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _hostile(case: str, outside: Path) -> tuple[str, bytes, list[str], str]:
    """(served file name, its bytes, extra data-get options, a word the refusal must name)."""
    escape = "../../outside/evil.txt"
    absolute = str(outside / "evil.txt")
    return {
        "zip-dotdot": ("val2017.zip", _zip_with(escape), [], "outside the target"),
        "zip-absolute": ("val2017.zip", _zip_with(absolute), [], "absolute path"),
        "zip-symlink": (
            "val2017.zip",
            _zip_with("val2017/link", str(outside).encode(), stat.S_IFLNK | 0o777),
            [],
            "symbolic link",
        ),
        "tar-dotdot": ("VOCtrainval_11-May-2012.tar", _tar_with("file", escape), [], "outside the target"),
        "tar-absolute": ("VOCtrainval_11-May-2012.tar", _tar_with("file", absolute), [], "absolute path"),
        "tar-symlink-out": (
            "VOCtrainval_11-May-2012.tar",
            _tar_with("symlink", "VOCdevkit/x", str(outside)),
            [],
            "symbolic link",
        ),
        "tar-hardlink-out": (
            "VOCtrainval_11-May-2012.tar",
            _tar_with("hardlink", "VOCdevkit/x", "../../outside/evil.txt"),
            [],
            "hard link",
        ),
        "tar-device": ("VOCtrainval_11-May-2012.tar", _tar_with("device", "VOCdevkit/dev"), [], "device"),
        "tar-fifo": ("VOCtrainval_11-May-2012.tar", _tar_with("fifo", "VOCdevkit/fifo"), [], "device, FIFO"),
        # Decompression bombs, bounded by small limits so the test stays fast: 4 MB of zeros.
        "zip-bomb-ratio": (
            "val2017.zip",
            _zip_with("val2017/zeros.jpg", bytes(4 << 20)),
            ["--max-ratio", "50"],
            "decompression bomb",
        ),
        "tgz-bomb-total": (
            "VOCtrainval_11-May-2012.tar",
            _tar_with("file", "VOCdevkit/zeros", data=bytes(4 << 20), gz=True),
            ["--max-unpacked-gb", "0.001"],
            "decompression bomb",
        ),
    }[case]


HOSTILE = [
    "zip-dotdot",
    "zip-absolute",
    "zip-symlink",
    "tar-dotdot",
    "tar-absolute",
    "tar-symlink-out",
    "tar-hardlink-out",
    "tar-device",
    "tar-fifo",
    "zip-bomb-ratio",
    "tgz-bomb-total",
]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archives_are_refused_and_nothing_is_written(case, files, tmp_path, capsys):
    outside = tmp_path / "outside"
    name, data, options, word = _hostile(case, outside)
    dataset = "coco2017-val" if name == "val2017.zip" else "voc2012"
    with fx.LoopbackServer({**files, name: data}) as srv:
        sources = fx.sources_for(srv.url, {**files, name: data}, tmp_path / "sources.yaml")
        before = tree(tmp_path)
        result = cli(capsys, "data", "get", dataset, "--root", tmp_path / "work/data", "--sources", sources, *options)
    one_line_error(result, name, word)
    assert tree(tmp_path) == before  # nothing inside the data folder, nothing outside it, no temporary folder
    assert not outside.exists() and not Path(str(outside) + "evil.txt").exists()


def test_a_sources_list_cannot_name_a_path_outside_the_root(server, files, tmp_path, capsys):
    for key, value in (("unpack", "../elsewhere"), ("unpack", "/etc"), ("place", "a/../../b.json")):
        sources = _sources(server, files, tmp_path / "sources.yaml", **{"val2017.zip": {"unpack": None, key: value}})
        result = cli(capsys, "data", "get", "coco2017-val", "--root", tmp_path / "data", "--sources", sources)
        one_line_error(result, str(sources), value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("imagenet", ("image-net.org", "sparc-eval data prepare imagenet --val-tar ILSVRC2012_img_val.tar")),
        ("flickr30k", ("shannon.cs.illinois.edu", "sparc-eval data prepare flickr30k --images flickr30k-images.tar.gz")),
    ],
)
def test_login_datasets_say_where_to_get_them_and_what_to_run(name, needles, tmp_path, capsys):
    result = cli(capsys, "data", "get", name, "--root", tmp_path / "data")
    one_line_error(result, *needles, str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def test_unknown_dataset_and_bad_options_are_one_line(tmp_path, capsys):
    one_line_error(cli(capsys, "data", "get", "coco2099", "--root", tmp_path), "coco2099", "coco2017-val")
    one_line_error(cli(capsys, "data", "get", "karpathy", "--root", tmp_path, "--retries", -1), "--retries")
    (tmp_path / "file").write_text("x")
    one_line_error(cli(capsys, "data", "get", "karpathy", "--root", tmp_path / "file"), "is a file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndatasets:\n  x:\n    files: [{name: a.zip, url: u, sha256: nothex}]\n")
    one_line_error(cli(capsys, "data", "get", "x", "--root", tmp_path / "d", "--sources", bad), str(bad), "sha256")


def test_the_shipped_sources_list_is_valid_and_honest():
    """Every file of the built-in list has a URL and a size or says it has none; nothing claims to be verified
    unless its checksum was computed from the file itself (only SugarCrepe's, from the repository)."""
    from sparc_eval.data.download import load_sources

    sources = load_sources()
    downloadable = sources.expand(ALL_DOWNLOADABLE)
    assert {"coco2014-train", "coco2014-val", "coco2017-train", "coco2017-val", "coco2017-annotations"} <= set(downloadable)
    for name in downloadable:
        for f in sources.datasets[name].files:
            assert f.url.startswith(("http://", "https://")) and f.checksum_source
            assert f.verified == (name == "sugarcrepe"), f.name
            assert f.sha256 or f.md5
    assert sources.datasets["imagenet"].login and sources.datasets["flickr30k"].login
    assert os.path.basename(sources.path) == "sources.yaml"

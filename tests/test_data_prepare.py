"""`sparc-eval data prepare imagenet|flickr30k` on stand-ins of the official files (a flat validation tar, a devkit
whose meta.mat is written with scipy.io.savemat in the devkit's structure, the Flickr30k image archive and
Karpathy's zip), then the real imagenet-zs / flickr-retrieval cards on what they built."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import official_fixtures as fx
import pytest
from test_data_get import cli, one_line_error

LEAF = {ident: wnid for ident, wnid, _ in fx.IMAGENET_LEAVES}


@pytest.fixture
def imagenet(tmp_path) -> tuple[Path, Path]:
    out = []
    for name, data in fx.imagenet_files().items():
        (tmp_path / name).write_bytes(data)
        out.append(tmp_path / name)
    return out[0], out[1]


def _expected_folders() -> dict[str, list[str]]:
    """Written out from the ground truth by hand: image k goes to the wnid of ILSVRC2012_ID truth[k-1]."""
    folders: dict[str, list[str]] = {}
    for k, ident in enumerate(fx.IMAGENET_TRUTH, start=1):
        folders.setdefault(LEAF[ident], []).append(f"ILSVRC2012_val_{k:08d}.JPEG")
    return folders


def test_imagenet_synset_folders_from_the_devkit(imagenet, tmp_path, capsys):
    val_tar, devkit = imagenet
    root = tmp_path / "data"
    result = cli(capsys, "data", "prepare", "imagenet", "--val-tar", val_tar, "--devkit", devkit, "--root", root)
    assert result.code == 0, result.err
    val = root / "imagenet/val"
    got = {d.name: sorted(p.name for p in d.iterdir()) for d in val.iterdir()}
    assert got == _expected_folders()
    assert "n01439121" not in got  # the inner synset (num_children > 0) is not a class
    with tarfile.open(val_tar) as tf:  # each image is the archive's own bytes
        assert (val / LEAF[fx.IMAGENET_TRUTH[0]] / "ILSVRC2012_val_00000001.JPEG").read_bytes() == tf.extractfile(
            "ILSVRC2012_val_00000001.JPEG"
        ).read()
    assert "differs from torchvision's published md5" in result.out  # a stand-in is not the official file
    assert "6 validation images in 3 synset folders" in result.out
    assert not [p for p in root.rglob(".*")]  # no temporary folder left


def test_imagenet_labels_as_imagenet_zs_reads_them(imagenet, tmp_path, capsys):
    from sparc_eval.data.registry import open_dataset
    from sparc_eval.tasks.prompts import classname_file

    val_tar, devkit = imagenet
    root = tmp_path / "data"
    assert cli(capsys, "data", "prepare", "imagenet", "--val-tar", val_tar, "--devkit", devkit, "--root", root).code == 0
    ds = open_dataset("imagefolder", root / "imagenet", "val", classnames=str(classname_file("imagenet")))
    # The built-in list is in the devkit's ILSVRC2012_ID order for these leaves: tench 0, goldfish 1, shark 2.
    by_name = {Path(p).name: label for p, label in zip(ds.paths, ds.targets)}
    assert by_name == {f"ILSVRC2012_val_{k:08d}.JPEG": ident - 1 for k, ident in enumerate(fx.IMAGENET_TRUTH, start=1)}
    assert [ds.classnames[i] for i in range(3)] == ["tench", "goldfish", "great white shark"]


def test_the_imagenet_zs_card_can_run_on_the_prepared_folders(imagenet, tmp_path, capsys):
    """The layout doctor opens the card's dataset with its reader and the built-in class list. (A full run would
    embed 1,000 classes x 80 templates with the text tower, minutes on a CPU for six images; the labels the run
    would read are checked in the test above.)"""
    val_tar, devkit = imagenet
    root = tmp_path / "data"
    assert cli(capsys, "data", "prepare", "imagenet", "--val-tar", val_tar, "--devkit", devkit, "--root", root).code == 0
    check = cli(capsys, "data", "check", "--task", "imagenet-zs", "--data-dir", root)
    assert check.code == 0 and f"opens: {len(fx.IMAGENET_TRUTH)} items" in check.out


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "needles"),
    [
        (
            {f"ILSVRC2012_val_{k:08d}.JPEG": b"x" for k in range(1, 6)},
            ("holds 5 images", "6 lines", "ILSVRC2012_val_00000006.JPEG"),
        ),
        ({"ILSVRC2012_val_00000007.JPEG": b"x"}, ("ILSVRC2012_val_00000007.JPEG", "no line")),
        ({"n01440764/ILSVRC2012_val_00000001.JPEG": b"x", "readme.txt": b"x"}, ("readme.txt", "not an ILSVRC2012_val")),
        ({"../ILSVRC2012_val_00000001.JPEG": b"x"}, ("outside the target",)),
    ],
)
def test_imagenet_files_that_do_not_match_are_refused(members, needles, imagenet, tmp_path, capsys):
    _, devkit = imagenet
    bad = tmp_path / "ILSVRC2012_img_val.tar"
    bad.write_bytes(_tar(members))
    root = tmp_path / "data"
    one_line_error(cli(capsys, "data", "prepare", "imagenet", "--val-tar", bad, "--devkit", devkit, "--root", root), *needles)
    assert not (root / "imagenet/val").exists() and not [p for p in tmp_path.rglob(".*")]


def test_a_devkit_without_meta_mat_is_refused(imagenet, tmp_path, capsys):
    val_tar, _ = imagenet
    devkit = tmp_path / "devkit.tar.gz"
    devkit.write_bytes(fx.tar_bytes({"ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": b"1\n"}, gz=True))
    result = cli(capsys, "data", "prepare", "imagenet", "--val-tar", val_tar, "--devkit", devkit, "--root", tmp_path / "d")
    one_line_error(result, "data/meta.mat")
    one_line_error(
        cli(capsys, "data", "prepare", "imagenet", "--val-tar", tmp_path / "nope.tar", "--devkit", devkit),
        "--val-tar",
        "nope.tar",
    )


def test_an_existing_tree_needs_force(imagenet, tmp_path, capsys):
    val_tar, devkit = imagenet
    root = tmp_path / "data"
    args = ("data", "prepare", "imagenet", "--val-tar", val_tar, "--devkit", devkit, "--root", root)
    assert cli(capsys, *args).code == 0
    one_line_error(cli(capsys, *args), "already exists", "--force")
    (root / "imagenet/val/stale.txt").write_text("old")
    assert cli(capsys, *args, "--force").code == 0 and not (root / "imagenet/val/stale.txt").exists()


# ------------------------------------------------------------------------------ Flickr30k


@pytest.fixture
def flickr(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "flickr30k-images.tar.gz"
    images.write_bytes(fx.flickr30k_images_tgz())
    captions = tmp_path / "caption_datasets.zip"
    captions.write_bytes(fx.coco2014_files()["caption_datasets.zip"])
    return images, captions


def test_flickr30k_layout_from_the_image_archive_and_karpathys_zip(flickr, tmp_path, capsys):
    images, captions = flickr
    root = tmp_path / "data"
    result = cli(capsys, "data", "prepare", "flickr30k", "--images", images, "--karpathy", captions, "--root", root)
    assert result.code == 0, result.err
    assert sorted(p.name for p in (root / "flickr30k/flickr30k-images").iterdir()) == sorted(f"{i}.jpg" for i in fx.FLICKR_IDS)
    assert json.loads((root / "flickr30k/dataset_flickr30k.json").read_text())["dataset"] == "flickr30k"
    assert cli(capsys, "data", "check", "--task", "flickr-retrieval", "--data-dir", root).code == 0


def test_flickr30k_without_the_split_file_says_how_to_get_it(flickr, tmp_path, capsys):
    images, _ = flickr
    root = tmp_path / "data"
    one_line_error(
        cli(capsys, "data", "prepare", "flickr30k", "--images", images, "--root", root), "sparc-eval data get karpathy"
    )


def test_flickr30k_archive_missing_an_image_is_refused(flickr, tmp_path, capsys):
    _, captions = flickr
    partial = tmp_path / "partial.tar.gz"
    partial.write_bytes(fx.tar_bytes({f"flickr30k-images/{fx.FLICKR_IDS[0]}.jpg": fx.jpeg()}, gz=True))
    root = tmp_path / "data"
    result = cli(capsys, "data", "prepare", "flickr30k", "--images", partial, "--karpathy", captions, "--root", root)
    one_line_error(result, "lacks 2 image(s)", f"{fx.FLICKR_IDS[1]}.jpg")
    assert not (root / "flickr30k").exists()


@pytest.mark.slow
def test_flickr_retrieval_runs_on_the_prepared_layout(flickr, tiny_sparc_ckpt, tmp_path, capsys):
    images, captions = flickr
    root = tmp_path / "data"
    assert cli(capsys, "data", "prepare", "flickr30k", "--images", images, "--karpathy", captions, "--root", root).code == 0
    run = cli(
        capsys,
        "run",
        "--task",
        "flickr-retrieval",
        "--ckpt",
        tiny_sparc_ckpt,
        "--data-dir",
        root,
        "--out",
        tmp_path / "out",
        "--num-workers",
        0,
    )
    assert run.code == 0, run.err
    record = json.loads(next((tmp_path / "out").rglob("flickr-retrieval-*.record.json")).read_text())
    assert record["n_samples"] == 2  # the two test-split images

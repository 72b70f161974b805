"""`sparc-eval data check --task NAME`: every file and folder a card reads, present or missing, and the command
that fetches each missing one; exit 0 only when the card can run. The manifest form `data check DIR` still works.

Trees are built by unpacking the official-layout stand-ins (tests/official_fixtures.py) with the same unpacker
`data get` uses, so no server is needed here."""

from __future__ import annotations

import json
from pathlib import Path

import official_fixtures as fx
import pytest
from test_data_get import cli, one_line_error

from sparc_eval.data.archives import unpack


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return fx.official_files()


def install(files: dict[str, bytes], name: str, into: Path, tmp_path: Path, pick: dict[str, str] | None = None) -> None:
    archive = tmp_path / f"archive-{name}"
    archive.write_bytes(files[name])
    if pick is None:
        unpack(archive, into)
        return
    for member, target in pick.items():
        unpack(archive, into, select=lambda rel, m=member, t=target: Path(t) if str(rel) == m else None)


def karpathy(files, data: Path, tmp_path: Path) -> None:
    install(files, "caption_datasets.zip", data, tmp_path, {"dataset_coco.json": "coco/dataset_coco.json"})


def report(capsys, task: str, data: Path) -> tuple[int, list[dict]]:
    result = cli(capsys, "data", "check", "--task", task, "--data-dir", data, "--json")
    payload = json.loads(result.out)
    assert payload["ok"] == (result.code == 0) and payload["task"] == task
    return result.code, payload["rows"]


def row(rows: list[dict], path_end: str) -> dict:
    found = [r for r in rows if r["path"].endswith(path_end)]
    assert len(found) == 1, (path_end, rows)
    return found[0]


def test_an_empty_data_folder_names_the_first_file_and_its_command(tmp_path, capsys):
    data = tmp_path / "data"
    result = cli(capsys, "data", "check", "--task", "coco-retrieval", "--data-dir", data)
    line = one_line_error(
        result, "coco-retrieval", str(data / "coco/dataset_coco.json"), f"sparc-eval data get karpathy --root {data}"
    )
    assert "missing" in line
    assert "dataset_coco.json" in result.out and "annotation file" in result.out  # the table on stdout


def test_each_missing_piece_is_listed_with_the_dataset_that_provides_it(files, tmp_path, capsys):
    data = tmp_path / "data"
    karpathy(files, data, tmp_path)
    code, rows = report(capsys, "coco-retrieval", data)
    assert code == 2
    assert row(rows, "coco/dataset_coco.json")["ok"]
    images = row(rows, "coco/val2014")  # the test split's folder, named by the split file
    assert images["status"] == "missing" and images["fix"] == f"sparc-eval data get coco2014-val --root {data}"

    install(files, "val2014.zip", data / "coco", tmp_path)
    (data / "coco/val2014/COCO_val2014_000000000073.jpg").unlink()
    code, rows = report(capsys, "coco-retrieval", data)
    images = row(rows, "coco/val2014")
    assert code == 2 and images["status"].startswith("1 of 2 files missing (COCO_val2014_000000000073.jpg")
    assert images["fix"].endswith("--force")  # the folder is there but incomplete: fetch it again over it

    install(files, "val2014.zip", tmp_path / "fresh", tmp_path)
    (tmp_path / "fresh/val2014/COCO_val2014_000000000073.jpg").rename(data / "coco/val2014/COCO_val2014_000000000073.jpg")
    code, rows = report(capsys, "coco-retrieval", data)
    assert code == 0 and rows[-1]["what"] == "karpathy reader" and rows[-1]["status"].startswith("opens: 2 items")


def test_lvis_val_needs_both_coco_folders_and_no_link_farm(files, tmp_path, capsys):
    data = tmp_path / "data"
    install(files, "lvis_v1_val.json.zip", data / "lvis", tmp_path)
    install(files, "lvis_v1_train.json.zip", data / "lvis", tmp_path)
    install(files, "val2017.zip", data / "coco", tmp_path)
    code, rows = report(capsys, "lvis-det", data)
    assert code == 2
    val_rows = [r for r in rows if r["used_by"] == "dataset"]
    assert [r["path"] for r in val_rows if r["what"] == "image folder"] == [
        str(data / "coco/val2017"),
        str(data / "coco/train2017"),
    ]
    train = [r for r in val_rows if r["path"] == str(data / "coco/train2017")][0]
    assert train["status"] == "missing" and train["fix"] == f"sparc-eval data get coco2017-train --root {data}"
    assert not any("lvis/images" in r["path"] for r in rows)
    install(files, "train2017.zip", data / "coco", tmp_path)
    assert report(capsys, "lvis-det", data)[0] == 0


def test_sugarcrepe_needs_its_json_files_and_coco_val2017(files, tmp_path, capsys):
    data = tmp_path / "data"
    code, rows = report(capsys, "sugarcrepe", data)
    types = row(rows, "sugar-crepe/data")
    assert code == 2 and types["status"] == "missing" and types["fix"] == f"sparc-eval data get sugarcrepe --root {data}"
    for kind in fx.SUGARCREPE_TYPES:
        (data / "sugar-crepe/data").mkdir(parents=True, exist_ok=True)
        (data / f"sugar-crepe/data/{kind}.json").write_bytes(files[f"{kind}.json"])
    code, rows = report(capsys, "sugarcrepe", data)
    images = row(rows, "coco/val2017")
    assert code == 2 and images["status"] == "missing" and images["fix"] == f"sparc-eval data get coco2017-val --root {data}"
    install(files, "val2017.zip", data / "coco", tmp_path)
    assert report(capsys, "sugarcrepe", data)[0] == 0


def test_imagenet_points_at_data_prepare_and_needs_no_class_file_of_its_own(tmp_path, capsys):
    data = tmp_path / "data"
    code, rows = report(capsys, "imagenet-zs", data)
    val = row(rows, "imagenet/val")
    assert code == 2 and val["fix"].startswith("sparc-eval data prepare imagenet --val-tar ILSVRC2012_img_val.tar")
    # The card's runner passes the built-in class list, so no imagenet/classnames.txt is asked for.
    names = [r for r in rows if r["what"] == "class-name file"]
    assert len(names) == 1 and names[0]["ok"] and names[0]["path"].endswith("builtin/classnames/imagenet.txt")


def test_a_card_param_that_names_a_data_file_is_checked(files, tmp_path, capsys):
    data = tmp_path / "data"
    install(files, "val2017.zip", data / "coco", tmp_path)
    install(
        files,
        "annotations_trainval2017.zip",
        data / "coco",
        tmp_path,
        {"annotations/instances_val2017.json": "annotations/instances_val2017.json"},
    )
    code, rows = report(capsys, "coco-grounding", data)
    captions = row(rows, "coco/annotations/captions_val2017.json")
    assert code == 2 and captions["used_by"] == "params.mentions_file" and captions["status"] == "missing"
    assert captions["fix"] == f"sparc-eval data get coco2017-annotations --root {data}"


def test_present_files_that_the_reader_rejects_fail_the_check(files, tmp_path, capsys):
    data = tmp_path / "data"
    install(files, "val2017.zip", data / "coco", tmp_path)
    install(files, "annotations_trainval2017.zip", data / "coco", tmp_path)
    install(files, "train2017.zip", data / "coco", tmp_path)
    assert report(capsys, "coco-det", data)[0] == 0
    instances = data / "coco/annotations/instances_val2017.json"
    content = json.loads(instances.read_text())
    content["annotations"][0]["image_id"] = 999  # an annotation of an image the file does not list
    instances.write_text(json.dumps(content))
    code, rows = report(capsys, "coco-det", data)
    bad = [r for r in rows if not r["ok"]]
    assert code == 2 and len(bad) == 1 and bad[0]["what"] == "coco-instances reader"
    assert "does not open" in bad[0]["status"] and "image id 999" in bad[0]["status"]


def test_a_synthscenes_card_can_run_before_its_tree_exists(tmp_path, capsys):
    code, rows = report(capsys, "synth-cls", tmp_path / "data")
    assert code == 0 and rows[0]["status"].startswith("absent: generated on the first")
    assert not (tmp_path / "data").exists()  # the doctor generates nothing


def test_synthscenes_tree_is_checked_like_any_other(synth_data_dir, capsys):
    code, rows = report(capsys, "synth-retrieval", synth_data_dir)
    assert code == 0 and any(r["what"] == "image folder" and "present" in r["status"] for r in rows)


def test_the_manifest_form_still_works(synth_root, tmp_path, capsys):
    assert cli(capsys, "data", "check", synth_root).code == 0
    one_line_error(cli(capsys, "data", "check"), "MANIFEST.json", "--task")
    one_line_error(cli(capsys, "data", "check", synth_root, "--task", "synth-cls"), "not both")
    one_line_error(cli(capsys, "data", "check", "--task", "no-such-card", "--data-dir", tmp_path), "no-such-card")

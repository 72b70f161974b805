"""`sparc-eval run` end to end on the small SynthScenes tree: table, records, reuse, --force, --json, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from colour_fakes import write_imagefolder
from conftest import assert_one_line_error, run_cli

from sparc_eval.evaluation import run_evaluation
from sparc_eval.fileio import sha256_file
from sparc_eval.results.record import SCHEMA_VERSION, load_record, load_samples, record_path
from sparc_eval.tasks.card import load_card
from sparc_eval.tasks.runner import get_runner

TASKS = ("synth-cls", "synth-retrieval")


def _records(out: Path) -> dict[str, Path]:
    return {load_record(p).task["name"]: p for p in sorted(out.rglob("*.record.json"))}


def _check_record(path: Path, task: str, ckpt_ref: str) -> None:
    record = load_record(path)
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 2
    assert record.task["name"] == task and record.task["version"] == 1 and len(record.task["card_sha256"]) == 64
    # Self-contained: what the card said to run, validated, and how the run was made.
    card = load_card(task)
    assert record.task["params"] == json.loads(json.dumps(card.runner_params.__dict__))
    assert record.task["dataset"] == {
        "format": card.dataset.format,
        "root": card.dataset.root,
        "split": card.dataset.split,
        "options": card.dataset.options,
    }
    assert record.task["family"] == get_runner(card.runner).family
    assert record.batch_size == 64 and record.num_workers >= 0 and record.threads >= 1
    assert record.samples_sha256 == sha256_file(path.parent / record.samples_file)
    assert record.checkpoint["ref"] == ckpt_ref and len(record.checkpoint["sha256"]) == 64
    runner = get_runner(record.task["runner"])
    assert list(record.metrics) == list(runner.metrics)
    assert all(m.higher_is_better for m in record.metrics.values())
    assert record.seed == 0 and record.device == "cpu" and record.precision == "fp32"
    assert {"python", "torch", "open_clip_torch"} <= set(record.packages)
    assert "git_revision" in raw and record.wall_time_s > 0 and record.throughput > 0
    samples = load_samples(path, record)
    assert record.n_samples == len([s for s in samples if s.get("kind", "image") == "image"])
    # The metric values are recomputed independently by tests/test_runner_contract.py (which also checks that
    # `aggregate` gives them back from this per-sample file, as the regression gate's bootstrap needs).


def test_run_two_tasks_then_reuse_then_force_json(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    out = tmp_path / "results"
    args = [
        "run",
        *[a for t in TASKS for a in ("--task", t)],
        "--ckpt",
        tiny_sparc_ckpt,
        "--data-dir",
        synth_data_dir,
        "--out",
        out,
        "--limit",
        "8",
    ]
    first = run_cli(*args)
    assert first.code == 0, first.stderr
    for needle in (*TASKS, "top1", "mean_per_class_recall", "i2t_r1", "t2i_r10"):
        assert needle in first.stdout
    assert "reused" not in first.stdout
    records = _records(out)
    assert set(records) == set(TASKS)
    for task, path in records.items():
        _check_record(path, task, str(tiny_sparc_ckpt))
        assert load_record(path).n_samples == 8 and load_record(path).limit == 8

    mtimes = {p: p.stat().st_mtime_ns for p in records.values()}
    again = run_cli(*args)
    assert again.code == 0, again.stderr
    assert again.stdout.count("reused") == len(TASKS)
    assert {p: p.stat().st_mtime_ns for p in records.values()} == mtimes

    forced = run_cli(*args, "--force", "--json")
    assert forced.code == 0, forced.stderr
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in records.values())
    assert _records(out) == records
    printed = json.loads(forced.stdout)
    assert printed == [json.loads(records[t].read_text()) for t in TASKS]

    # Another seed is another run: recomputed, saying why on one line.
    reseeded = run_cli(*args, "--seed", "1")
    assert reseeded.code == 0, reseeded.stderr
    for t in TASKS:
        assert f"recomputing {t}: seed 1 differs from the record's 0" in reseeded.stderr
        assert load_record(records[t]).seed == 1


def test_open_clip_weights_file_end_to_end(synth_data_dir, tmp_path):
    import open_clip
    import torch

    torch.manual_seed(1)
    weights = tmp_path / "vit-s-32-alt.pt"
    torch.save(open_clip.create_model("ViT-S-32-alt", pretrained=None).state_dict(), weights)
    ref = f"openclip:ViT-S-32-alt@{weights}"
    out = tmp_path / "results"
    result = run_cli(
        "run",
        "--task",
        "synth-retrieval",
        "--ckpt",
        ref,
        "--data-dir",
        synth_data_dir,
        "--out",
        out,
        "--limit",
        "4",
        "--precision",
        "bf16",
    )
    assert result.code == 0, result.stderr
    (path,) = _records(out).values()
    record = load_record(path)
    assert record.checkpoint["sha256"] == sha256_file(weights)
    assert record.checkpoint["arch"] == "ViT-S-32-alt" and record.precision == "bf16"
    assert record.n_samples == 4 and record.limit == 4
    assert all(m.value is not None for m in record.metrics.values())


# ------------------------------------------------------------------------------------------ bad input


def test_missing_checkpoint(synth_data_dir, tmp_path):
    missing = tmp_path / "no-such-ckpt"
    result = run_cli("run", "--task", "synth-cls", "--ckpt", missing, "--data-dir", synth_data_dir, "--out", tmp_path / "out")
    assert_one_line_error(result, str(missing))
    assert not (tmp_path / "out").exists()


def test_missing_dataset_root(tiny_sparc_ckpt, tmp_path):
    result = run_cli(
        "run", "--task", "coco-retrieval", "--ckpt", tiny_sparc_ckpt, "--data-dir", tmp_path / "data", "--out", tmp_path / "out"
    )
    assert_one_line_error(result, str(tmp_path / "data" / "coco"), "does not exist")
    assert not list((tmp_path / "out").rglob("*.json*"))


def test_classname_file_that_does_not_match_the_folders(tiny_sparc_ckpt, tmp_path):
    root = write_imagefolder(tmp_path / "ds", "val", {"red": ["red"], "teal": ["blue"]}, ["red", "blue"])
    card = {
        "name": "mismatch",
        "version": 1,
        "runner": "classification",
        "dataset": {"format": "imagefolder", "root": str(root), "split": "val"},
    }
    (tmp_path / "mismatch.yaml").write_text(yaml.safe_dump(card))
    result = run_cli("run", "--task", tmp_path / "mismatch.yaml", "--ckpt", tiny_sparc_ckpt, "--out", tmp_path / "out")
    assert_one_line_error(result, str(root / "val" / "teal"), str(root / "classnames.txt"))
    assert not list((tmp_path / "out").rglob("*.json*"))


def test_a_record_is_reused_only_when_everything_that_makes_its_numbers_matches(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    out = tmp_path / "results"

    def run(**changes):
        settings = {"out": out, "data_dir": synth_data_dir, "limit": 4, "num_workers": 0, **changes}
        return run_evaluation(str(tiny_sparc_ckpt), "synth-cls", **settings)

    first = run()
    assert not first.reused and first.recomputed_because is None
    again = run()
    assert again.reused and again.record.to_json() == first.record.to_json()

    for change, why, why_back in (
        ({"seed": 1}, "seed 1 differs from the record's 0", "seed 0 differs from the record's 1"),
        (
            {"precision": "bf16"},
            "precision 'bf16' differs from the record's 'fp32'",
            "precision 'fp32' differs from the record's 'bf16'",
        ),
        ({"batch_size": 3}, "batch size 3 differs from the record's 64", "batch size 64 differs from the record's 3"),
    ):
        changed = run(**change)
        assert not changed.reused and changed.recomputed_because == why
        assert run(**change).reused
        back = run()  # and back: the record now holds the changed run
        assert not back.reused and back.recomputed_because == why_back

    samples = first.path.parent / first.record.samples_file
    samples.unlink()
    gone = run()
    assert not gone.reused and "per-sample file" in gone.recomputed_because and "is missing" in gone.recomputed_because
    assert samples.is_file()
    with samples.open("a") as f:
        f.write('{"id": "forged"}\n')
    edited = run()
    assert not edited.reused and "has changed since the record was written" in edited.recomputed_because
    assert run().reused

    # A record at another limit's path (copied, renamed) is never taken for that limit.
    card = load_card("synth-cls")
    other = record_path(out, first.record.checkpoint["sha256"], "synth-cls", card.sha256, 8)
    shutil.copy(first.path, other)
    limited = run(limit=8)
    assert not limited.reused and "limit 8 differs from the record's 4" in limited.recomputed_because
    assert load_record(other).limit == 8 and load_record(other).n_samples == 8

    # A record of an older schema is recomputed, not read.
    raw = json.loads(first.path.read_text())
    first.path.write_text(json.dumps({**raw, "schema_version": 1}))
    old = run()
    assert not old.reused and "schema version 1" in old.recomputed_because
    forced = run(force=True)
    assert not forced.reused and forced.recomputed_because is None

"""Kill a run with SIGKILL in the middle of a write, run it again: the rerun finishes, its result is the one an
uninterrupted run gives, and no temporary of the killed write is left (docs/reliability.md, "No leftovers").

The kill is placed exactly: a small wrapper around the real entry point makes the process SIGKILL itself at the
moment a chosen file is about to be renamed into place (its temporary fully written, the target not yet there),
the widest window a kill can hit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from micro_training import MICRO

from sparc_eval.fileio import sha256_file

pytestmark = pytest.mark.slow

# Runs `sparc-eval ARGS`, killing itself when a file or folder whose name ends in $KILL_AT is renamed into place.
_WRAPPER = """
import json, os, signal, sys
target = os.environ.get("KILL_AT", "")
for name in ("replace", "rename"):
    real = getattr(os, name)
    def hooked(src, dst, *args, _real=real, **kwargs):
        if target and os.fspath(dst).endswith(target):
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(src, dst, *args, **kwargs)
    setattr(os, name, hooked)
from sparc_eval.models.sparc import PRESETS
PRESETS["micro"] = json.loads(os.environ["MICRO"])
from sparc_eval.cli.main import main
main(sys.argv[1:])
"""

# What differs between two runs of the same evaluation: when and how fast it ran, and the source tree's revision
# (a shared checkout may get a commit between the two runs).
_TIMING = ("created_at", "wall_time_s", "throughput", "fit_time_s", "git_revision")


def sparc_eval(*args: str, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT": kill_at, "MICRO": json.dumps(MICRO), "SPARC_EVAL_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True, text=True, env=env)


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def comparable(record_file: Path) -> dict:
    raw = json.loads(record_file.read_text())
    return {k: v for k, v in raw.items() if k not in _TIMING}


@pytest.mark.parametrize("kill_at", [".confusion.json", ".samples.jsonl", ".record.json"])
def test_run_killed_mid_write_reruns_to_the_same_record(kill_at, tmp_path, tiny_sparc_ckpt, synth_data_dir):
    """synth-seg writes an artifact (confusion.json), the samples file and the record: a kill at each write."""
    args = ["run", "--task", "synth-seg", "--limit", "8", "--ckpt", str(tiny_sparc_ckpt), "--data-dir", str(synth_data_dir)]
    args += ["--num-workers", "0", "--no-cache"]
    reference = sparc_eval(*args, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    killed = sparc_eval(*args, "--out", str(out), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    orphans = temporaries(out)
    assert orphans and all(kill_at in p.name for p in orphans), orphans  # the kill hit the write it aimed at
    assert not list(out.rglob("*.record.json"))  # no record without its files

    rerun = sparc_eval(*args, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert temporaries(out) == []
    (ref_record,) = (tmp_path / "reference").rglob("*.record.json")
    (record,) = out.rglob("*.record.json")
    assert record.relative_to(out) == ref_record.relative_to(tmp_path / "reference")
    assert comparable(record) == comparable(ref_record)
    numerics = json.loads(record.read_text())["numerics"]  # what besides the seed decides the low bits (README)
    assert numerics["intra_op_threads"] == int(os.environ["OMP_NUM_THREADS"]) and numerics["cpu_capability"]
    for name in ("samples.jsonl", "confusion.json"):
        stem = record.name[: -len(".record.json")]
        assert (record.parent / f"{stem}.{name}").read_bytes() == (ref_record.parent / f"{stem}.{name}").read_bytes()


def test_train_killed_while_publishing_resumes_to_the_same_checkpoint(tmp_path):
    """A 4-step run saving at step 2, killed as its finished checkpoint folder is renamed into place; the rerun
    with --resume continues from step 2 and publishes the weights of an uninterrupted run, bit for bit."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(16):
        Image.new("RGB", (32, 32), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(data / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "caption": f"a shape of colour {i}"}))
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    args = ["train", "--data", str(data), "--arch", "micro", "--steps", "4", "--batch-size", "8", "--warmup", "1"]
    args += ["--save-every", "2", "--log-every", "1"]

    reference = sparc_eval(*args, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    killed = sparc_eval(*args, "--out", str(out), kill_at="/killed")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    assert not out.exists()
    assert [p.name.startswith(".killed.") for p in temporaries(tmp_path)] == [True]  # the unpublished folder
    assert (tmp_path / "killed.periodic" / "step_0000002").is_dir()

    rerun = sparc_eval(*args, "--out", str(out), "--resume")
    assert rerun.returncode == 0, rerun.stderr
    assert temporaries(tmp_path) == []
    assert not (tmp_path / "killed.periodic").exists()
    assert sha256_file(out / "model.safetensors") == sha256_file(tmp_path / "reference" / "model.safetensors")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(line) for line in (tmp_path / "reference" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    numerics = json.loads((out / "config.json").read_text())["provenance"]["numerics"]
    assert numerics["deterministic_algorithms"] is True and numerics["cpu"] and numerics["torch"]

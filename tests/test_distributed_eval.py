"""Distributed evaluation: 2 gloo processes under torchrun give the records of 1 process, for every runner.

One torchrun job scores a small variant of each runner's SynthScenes card (first 10 images, batch 4, so the
two ranks' slices of 5 split into batches of 4 + 1 where one process has 4 + 4 + 2) and is compared with
in-process single-process runs: same metrics, same per-sample file in the same order; counts exactly,
floats to 1e-6. A failure on one rank ends both ranks with one line and no record.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparc_eval.results.record import load_record, load_samples
from sparc_eval.tasks.card import list_card_paths, load_card
from sparc_eval.tasks.distributed import SINGLE, FitBatches, World
from sparc_eval.tasks.runner import RUNNERS

LIMIT, BATCH = 10, 4
# Fitting stages cut to one short epoch; dropout off, since DDP's ranks draw other dropout masks than one process.
SMALL_PARAMS = {
    "detection": {"epochs": 1},
    "captioning": {"epochs": 1, "width": 32, "heads": 2, "latents": 4, "decoder_layers": 1, "dropout": 0.0, "batch_size": 12},
}
# Detection scores are stored to 6 significant digits: a 1e-7 difference of the fitted head flips the 6th.
ROUNDED_TO_6_DIGITS = {"scores"}


def _synth_card(runner: str) -> Path | None:
    for path in list_card_paths():
        card = load_card(path)
        if card.runner == runner and "{synthscenes}" in card.dataset.root:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARC_EVAL_CACHE", "SPARC_EVAL_NUM_WORKERS")}
    return {**env, "OMP_NUM_THREADS": "1", "SPARC_EVAL_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> dict[str, Path]:
    """runner name -> a small variant of its SynthScenes card."""
    folder = tmp_path_factory.mktemp("cards")
    out = {}
    for runner in RUNNERS.names():
        source = _synth_card(runner)
        if source is None:
            continue
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
        raw["name"] = f"dist-{raw['name']}"
        raw["params"] = {**(raw.get("params") or {}), **SMALL_PARAMS.get(runner, {})}
        out[runner] = folder / f"{raw['name']}.yaml"
        out[runner].write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def runs(cards, synth_data_dir, tiny_sparc_ckpt, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """runner name -> (record of 1 process, record of 2 processes)."""
    from sparc_eval.evaluation import run_evaluation

    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    common = ["--ckpt", str(tiny_sparc_ckpt), "--data-dir", str(synth_data_dir), "--limit", str(LIMIT)]
    common += ["--batch-size", str(BATCH), "--num-workers", "0"]
    tasks = [arg for card in cards.values() for arg in ("--task", str(card))]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    job = subprocess.Popen(  # the two ranks run while this process scores the same cards alone
        [*torchrun, "-m", "sparc_eval", "run", *tasks, *common, "--out", str(two)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SPARC_EVAL_CACHE", raising=False)
        paths = {
            runner: run_evaluation(
                str(tiny_sparc_ckpt), card, out=one, data_dir=synth_data_dir, limit=LIMIT, batch_size=BATCH, num_workers=0
            ).path
            for runner, card in cards.items()
        }
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    return {runner: (path, two / path.relative_to(one)) for runner, path in paths.items()}


def _assert_same(a, b, where: str, key: str = "") -> None:
    """Equal structure and values: ints, strings, None exactly; floats to 1e-6 (values rounded to 6 digits: 1e-5)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a, b)
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}", k)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]", key)
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        rel = 2e-5 if key in ROUNDED_TO_6_DIGITS else 1e-6
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-6), (where, a, b)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


@pytest.mark.slow  # one torchrun job of every runner with its fitting stages: about a minute on 2 cores
@pytest.mark.parametrize("runner", RUNNERS.names())
def test_two_processes_give_the_record_of_one(runner, runs):
    assert runner in runs, f"runner {runner!r} has no built-in SynthScenes card to check distributed evaluation with"
    path_one, path_two = runs[runner]
    one, two = load_record(path_one), load_record(path_two)
    assert (one.world_size, two.world_size) == (1, 2)
    assert one.n_samples == two.n_samples
    _assert_same(one.metric_values(), two.metric_values(), "metrics")
    samples_one, samples_two = load_samples(path_one, one), load_samples(path_two, two)
    assert len(samples_one) == len(samples_two)
    _assert_same(samples_one, samples_two, "samples")  # same records in the same (the split's) order
    # Count artifacts are sums of exact per-rank counts: bit-identical (segmentation's confusion matrix).
    for name in one.artifacts.values():
        if name.endswith("confusion.json"):
            assert (path_one.parent / name).read_text() == (path_two.parent / name).read_text()


@pytest.mark.slow
def test_one_failing_rank_stops_both_with_one_line_and_no_record(tiny_sparc_ckpt, synth_root, tmp_path):
    from sparc_eval.data.registry import open_dataset

    tree = tmp_path / "tree"
    shutil.copytree(synth_root, tree)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    load_card("synth-cls").synthscenes_dir(data_dir).symlink_to(tree, target_is_directory=True)
    # Item 7 of the first 10 lies in rank 1's slice (items 5-9); rank 0 finishes its own and waits for rank 1.
    broken = open_dataset("imagefolder", tree / "imagefolder", "val").paths[7]
    Path(broken).write_bytes(b"not an image")
    out = tmp_path / "results"
    port = _free_port()
    args = ["run", "--task", "synth-cls", "--ckpt", str(tiny_sparc_ckpt), "--data-dir", str(data_dir), "--out", str(out)]
    args += ["--limit", str(LIMIT), "--batch-size", str(BATCH), "--num-workers", "1"]  # the error comes from a worker
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sparc_eval", *args],
            env={**_env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"}
            | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], results
    lines = [line for _, err in results for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "rank 1 of 2" in lines[0] and Path(broken).name in lines[0] and "Traceback" not in lines[0]
    assert not list(out.rglob("*.record.json")) and not list(out.rglob("*.samples.jsonl"))


# ------------------------------------------------------------------------------------------ the pieces, in one process


@pytest.mark.parametrize("n", [0, 1, 2, 5, 10, 11])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_cover_the_split_once_in_order_and_differ_by_at_most_one(n, size):
    shards = [World(rank=r, size=size).shard(n) for r in range(size)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("n, batch", [(10, 4), (9, 3), (7, 8)])
def test_fit_batches_are_one_process_batches_split_among_ranks(n, batch):
    # A single process's shuffled batches, as the fitting stages drew them before distribution.
    reference = torch.utils.data.DataLoader(range(n), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(3))
    expected = [[b.tolist() for b in reference] for _ in range(2)]  # two epochs from one generator
    single = FitBatches(n, batch, 3, SINGLE)
    assert [list(single) for _ in range(2)] == expected
    for size in (2, 3):
        ranks = [FitBatches(n, batch, 3, World(rank=r, size=size)) for r in range(size)]
        for epoch in range(2):
            per_rank = [list(b) for b in ranks]
            for step, global_batch in enumerate(expected[epoch]):
                parts = [per_rank[r][step] for r in range(size)]
                kept = [part for r, part in enumerate(parts) if ranks[r].weights()[step] == 1.0]
                assert [i for part in kept for i in part] == global_batch
                for r, part in enumerate(parts):  # a placeholder is one item of the batch, weighted 0
                    if ranks[r].weights()[step] == 0.0:
                        assert len(part) == 1 and part[0] in global_batch


def test_default_workers_follow_the_machine_and_the_environment(monkeypatch):
    from sparc_eval.errors import SparcEvalError
    from sparc_eval.tasks.distributed import WORKERS_ENV, default_num_workers

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert default_num_workers(SINGLE) == 8  # half of 16 CPUs
    assert default_num_workers(World(rank=0, size=4)) == 2  # 4 ranks share the node's 16 CPUs
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_num_workers(SINGLE) == 1 and default_num_workers(World(rank=1, size=2)) == 0
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_num_workers(World(rank=0, size=2)) == 3
    monkeypatch.setenv(WORKERS_ENV, "-1")
    with pytest.raises(SparcEvalError, match=WORKERS_ENV):
        default_num_workers(SINGLE)

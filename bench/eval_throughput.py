"""Evaluation speed: classification images/s, forward FLOP rate vs this machine's matmul rate, retrieval memory.

Everything is measured in one run, side by side (interleaved repetitions, medians), so the ratios hold even
when the machine's speed drifts. Three parts:

1. matmul: GFLOP/s of a large square matmul in fp32 and bf16: the machine's practical ceiling.
2. forward: `encode_image` of the tiny preset (64 px) and a random-init open_clip ViT-B-32 (224 px), fp32 and
   bf16 autocast, under inference_mode. FLOPs counted by torch.utils.flop_counter.FlopCounterMode; the
   achieved rate is reported as a share of the matmul rate of the same precision. Then `sparc-eval run`'s
   own path (`run_evaluation` on synth-cls: decoding, preprocessing, text prompts, records) in images/s.
3. peer: zero-shot classification against CLIP_benchmark's `zeroshot_classification.evaluate` on the same
   open_clip model (random-init ViT-B-32, identical weights), the same SynthScenes images and 36 classes,
   threads, batch size and DataLoader workers, interleaved: images/s of the whole zero-shot evaluation
   (prompts + images + scores) and of its image half alone (CLIP_benchmark's run_classification with a ready
   classifier; sparc-eval with the class prompts in its feature cache), the ratio to CLIP_benchmark fp32,
   top-1, and how many images get the same top-1 class as CLIP_benchmark fp32. Needs clip-benchmark, which stays out of sparc-eval's
   dependencies: python -m venv --system-site-packages V && V/bin/pip install clip-benchmark==1.6.2 requests
   "numpy<2.4", then run this file with V/bin/python.
4. retrieval: `retrieval_ranks` over N captions (5 per image, D=512) for two N, each in a fresh process;
   the peak resident memory added by scoring stays the same, while a full similarity matrix would grow as N^2.

Example: python bench/eval_throughput.py --n-val 256 --captions 25000 50000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

console = Console()


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))


# ------------------------------------------------------------------------------------------- matmul + forward


def matmul_gflops(n: int, dtype: torch.dtype, reps: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: kernel selection, thread pool
    return 2 * n**3 / _median_time(lambda: a @ b, reps) / 1e9


def forward_flops(model, images: torch.Tensor) -> int:
    """FLOPs of one encode_image, the same in every precision. nn.MultiheadAttention's fused inference
    fast path is opaque to FlopCounterMode (its projections would go uncounted), so it is off while counting."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), counter:
            model.encode_image(images)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return counter.get_total_flops()


def bench_forward(models: dict, shapes: dict[str, tuple[int, int]], reps: int, matmul: dict[str, float]) -> list[dict]:
    """shapes: model name -> (batch, image side). Each precision runs as `sparc-eval run` does: fp32, or
    "bf16" = bf16 autocast over bf16 weights; "bf16 autocast only" (fp32 weights) shows why the weights are cast."""
    import copy

    configs = [(name, precision) for name in models for precision in ("fp32", "bf16", "bf16 autocast only")]
    inputs = {name: torch.randn(shapes[name][0], 3, shapes[name][1], shapes[name][1]) for name in models}
    batch = {name: shapes[name][0] for name in models}
    flops = {name: forward_flops(models[name], inputs[name]) for name in models}
    variants = {(name, p): copy.deepcopy(models[name]).to(torch.bfloat16) if p == "bf16" else models[name] for name, p in configs}
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    with torch.inference_mode():
        for c in configs:  # warm-up
            with _autocast(c[1]):
                variants[c].encode_image(inputs[c[0]])
        for _ in range(reps):  # interleaved, so drift hits every configuration alike
            for c in configs:
                with _autocast(c[1]):
                    start = time.perf_counter()
                    variants[c].encode_image(inputs[c[0]])
                    times[c].append(time.perf_counter() - start)
    rows = []
    for name, precision in configs:
        t = statistics.median(times[(name, precision)])
        rate = flops[name] / t / 1e9
        rows.append(
            {
                "model": name,
                "precision": precision,
                "batch": batch[name],
                "images_per_s": batch[name] / t,
                "gflop_per_image": flops[name] / batch[name] / 1e9,
                "gflops": rate,
                "share_of_matmul": rate / matmul[precision.split()[0]],
            }
        )
    return rows


def bench_run(ckpts: dict[str, str], n_val: int, precisions: tuple[str, ...], workers: int) -> list[dict]:
    """`sparc-eval run --task synth-cls` through run_evaluation: the whole path, records written to a temp folder."""
    from sparc_eval.data.synth import generate_synthscenes
    from sparc_eval.evaluation import run_evaluation
    from sparc_eval.tasks.card import load_card

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = load_card("synth-cls").synthscenes_dir(tmp / "data")
        tree.parent.mkdir()
        generate_synthscenes(tree, seed=0, n_train=8, n_val=n_val, image_size=64, workers=1)
        for name, ckpt in ckpts.items():
            for precision in precisions:
                record = run_evaluation(
                    ckpt,
                    "synth-cls",
                    out=tmp / "results",
                    data_dir=tmp / "data",
                    precision=precision,
                    num_workers=workers,
                    batch_size=64,
                    force=True,
                    cache=False,
                ).record
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "images": record.n_samples,
                        "images_per_s": record.throughput,
                        "wall_s": record.wall_time_s,
                    }
                )
    return rows


# ------------------------------------------------------------------------------------- peer: CLIP_benchmark


class _LabelledImages(torch.utils.data.Dataset):
    """A sparc-eval imagefolder dataset as (image, label) pairs with `.classes`, the interface CLIP_benchmark reads."""

    def __init__(self, dataset):
        self.dataset, self.classes = dataset, list(dataset.classnames)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return item["image"], item["label"]


def bench_peer(n_val: int, image_size: int, reps: int, workers: int, batch: int) -> list[dict]:
    """sparc-eval's synth-cls against CLIP_benchmark's zero-shot evaluate on one open_clip model, interleaved."""
    import open_clip
    from clip_benchmark.metrics import zeroshot_classification

    from sparc_eval.data.registry import open_dataset
    from sparc_eval.data.synth import generate_synthscenes
    from sparc_eval.evaluation import run_evaluation
    from sparc_eval.models.loaders import OPENCLIP_INIT_SEED, load_model
    from sparc_eval.models.sparc import state_dict_sha256
    from sparc_eval.results.record import load_samples
    from sparc_eval.tasks.card import load_card

    ckpt = "openclip:ViT-B-32"
    with torch.random.fork_rng():  # the loader's own seeded initialisation: the same weights on both sides
        torch.manual_seed(OPENCLIP_INIT_SEED)
        peer_model, _, peer_preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    peer_model.eval()
    if state_dict_sha256(peer_model) != load_model(ckpt).describe()["sha256"]:
        raise SystemExit("CLIP_benchmark's model and sparc-eval's differ: the comparison would not be like for like")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = load_card("synth-cls").synthscenes_dir(tmp / "data")
        tree.parent.mkdir()
        generate_synthscenes(tree, seed=0, n_train=8, n_val=n_val, image_size=image_size, workers=1)
        folder = tree / "imagefolder"
        # The same images, labels and all 36 classes as synth-cls (torchvision's ImageFolder would know only the
        # classes with a folder in this split), as the (image, label) pairs and `.classes` CLIP_benchmark reads.
        dataset = _LabelledImages(open_dataset("imagefolder", folder, "val", transform=peer_preprocess))
        classnames = dataset.classes
        templates = [t.replace("{}", "{c}") for t in (folder / "templates.txt").read_text().split("\n") if t]
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)

        def peer_whole():  # CLIP_benchmark's evaluate: the classifier (one class's templates per batch), then the images
            start = time.perf_counter()
            metrics = zeroshot_classification.evaluate(peer_model, loader, tokenizer, classnames, templates, "cpu", amp=False)
            return metrics["acc1"], None, time.perf_counter() - start

        classifier = zeroshot_classification.zero_shot_classifier(peer_model, tokenizer, classnames, templates, "cpu", amp=False)

        def peer_images():  # the image half of evaluate, with the classifier above
            start = time.perf_counter()
            logits, target = zeroshot_classification.run_classification(peer_model, classifier, loader, "cpu", amp=False)
            seconds = time.perf_counter() - start
            predictions = logits.argmax(dim=1)
            return float((predictions == target).float().mean()), predictions.tolist(), seconds

        def ours(precision: str, images_only: bool):
            def run():
                if images_only:  # keep the class-prompt entries of the warm-up round, encode the images again
                    for entry in (tmp / "results" / "cache" / "features").rglob("image-*.safetensors"):
                        entry.unlink()
                evaluation = run_evaluation(
                    ckpt,
                    "synth-cls",
                    out=tmp / "results",
                    data_dir=tmp / "data",
                    precision=precision,
                    num_workers=workers,
                    batch_size=batch,
                    force=True,
                    cache=images_only,
                )
                predictions = [s["predictions"][0] for s in load_samples(evaluation.path, evaluation.record)]
                # The record's wall time: everything after loading the model (dataset, prompts, images, scores).
                return evaluation.record.metrics["top1"].value, predictions, evaluation.record.wall_time_s

            return run

        configs = {
            "CLIP_benchmark fp32 evaluate": peer_whole,
            "sparc-eval fp32": ours("fp32", False),
            "sparc-eval bf16": ours("bf16", False),
            "CLIP_benchmark fp32, images only": peer_images,
            "sparc-eval fp32, images only (prompts cached)": ours("fp32", True),
            "sparc-eval bf16, images only (prompts cached)": ours("bf16", True),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        results: dict[str, tuple] = {}
        for rep in range(reps + 1):  # the first round warms up (thread pools, kernels, file cache, prompt entries)
            for name, run in configs.items():
                results[name] = run()
                if rep:
                    times[name].append(results[name][2])
    reference = results["CLIP_benchmark fp32, images only"][1]
    rows = []
    for name in configs:
        t = statistics.median(times[name])
        base = statistics.median(
            times["CLIP_benchmark fp32 evaluate" if "images only" not in name else "CLIP_benchmark fp32, images only"]
        )
        predictions = results[name][1]  # None for CLIP_benchmark's evaluate: it returns metrics only
        rows.append(
            {
                "evaluator": name,
                "images": n_val,
                "images_per_s": n_val / t,
                "x_clip_benchmark_fp32": base / t,
                "top1": 100 * results[name][0],
                "same_top1_as_clip_benchmark": "n/a"
                if predictions is None
                else f"{sum(a == b for a, b in zip(predictions, reference))}/{len(reference)}",
            }
        )
    return rows


# -------------------------------------------------------------------------------------------------- retrieval


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages that ops allocate inside the block (the allocator's caching aside).

    Every op output whose storage is new is counted until its tensor is collected; `existing` tensors (the
    inputs) and views of them are not allocations.
    """

    def __init__(self, existing: tuple[torch.Tensor, ...]):
        super().__init__()
        self.live = {t.untyped_storage().data_ptr(): 0 for t in existing}
        self.now = self.peak = 0

    def _free(self, key: int, nbytes: int) -> None:
        self.live.pop(key, None)
        self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if key not in self.live and nbytes:
                    self.live[key] = nbytes
                    self.now += nbytes
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._free, key, nbytes)
        return out


def _retrieval_child(n_captions: int, chunk: int) -> None:
    """Runs in a fresh process: the memory retrieval_ranks adds over random embeddings, and its time.

    Two views of memory: the peak of tensor storage the call allocates (exact, PeakTensorBytes), and the
    peak resident memory it adds (Linux resets the VmHWM high-water mark to the current RSS when "5" is
    written to /proc/self/clear_refs), which includes the allocator's and BLAS's own buffers.
    """
    from sparc_eval.metrics.retrieval import retrieval_ranks

    g = torch.Generator().manual_seed(0)
    n_images, dim = n_captions // 5, 512
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(n_captions, dim, generator=g), dim=-1)
    owner = torch.arange(n_captions) // 5
    retrieval_ranks(images[:64], texts[:320], owner[:320], chunk=chunk)  # warm-up: thread pool, kernels
    Path("/proc/self/clear_refs").write_text("5")
    before = _memory_kib("VmRSS")
    start = time.perf_counter()
    retrieval_ranks(images, texts, owner, chunk=chunk)
    seconds = time.perf_counter() - start
    rss_added = (_memory_kib("VmHWM") - before) / 1024
    with PeakTensorBytes(existing=(images, texts, owner)) as tracked:
        retrieval_ranks(images, texts, owner, chunk=chunk)
    print(
        json.dumps(
            {
                "captions": n_captions,
                "images": n_images,
                "tensor_peak_mib": tracked.peak / 2**20,
                "rss_peak_added_mib": rss_added,
                "inputs_mib": (images.numel() + texts.numel()) * 4 / 2**20,
                "seconds": seconds,
                "full_matrix_mib": n_images * n_captions * 4 / 2**20,
            }
        )
    )


def bench_retrieval(caption_counts: list[int], chunk: int) -> list[dict]:
    rows = []
    for n in caption_counts:
        out = subprocess.run(
            [sys.executable, __file__, "--retrieval-child", str(n), "--chunk", str(chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


# ------------------------------------------------------------------------------------------------------- main


def _table(title: str, rows: list[dict], fmt: dict[str, str]) -> Table:
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*[format(v, fmt.get(k, "")) if isinstance(v, float) else str(v) for k, v in row.items()])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.splitlines()[-1])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per configuration (median)")
    parser.add_argument("--n-val", type=int, default=256, help="SynthScenes val images for the `run` measurement")
    parser.add_argument("--captions", type=int, nargs="+", default=[25000, 50000], help="caption counts for retrieval")
    parser.add_argument("--chunk", type=int, default=2048, help="retrieval block side")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the `run` and `peer` measurements")
    parser.add_argument(
        "--parts", nargs="+", default=["forward", "run", "peer", "retrieval"], choices=["forward", "run", "peer", "retrieval"]
    )
    parser.add_argument("--peer-images", type=int, default=128, help="SynthScenes val images for the CLIP_benchmark comparison")
    parser.add_argument("--peer-image-size", type=int, default=224, help="their side in pixels")
    parser.add_argument("--peer-reps", type=int, default=3, help="timed rounds of the comparison (after one warm-up round)")
    parser.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    parser.add_argument("--retrieval-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.retrieval_child:
        _retrieval_child(args.retrieval_child, args.chunk)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SPARC_EVAL_NO_PROGRESS", "1")
    from sparc_eval.models.checkpoint import save_checkpoint
    from sparc_eval.models.loaders import load_model
    from sparc_eval.models.sparc import create_model

    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    figures: dict = {}
    if {"forward", "run"} & set(args.parts):
        matmul = {"fp32": matmul_gflops(2048, torch.float32, args.reps), "bf16": matmul_gflops(2048, torch.bfloat16, args.reps)}
        figures["matmul_gflops"] = matmul
        console.print(f"matmul 2048^3: fp32 {matmul['fp32']:.0f} GFLOP/s, bf16 {matmul['bf16']:.0f} GFLOP/s")
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            tiny_dir = save_checkpoint(create_model("tiny"), Path(tmp) / "tiny")
            if "forward" in args.parts:
                models = {"tiny": load_model(str(tiny_dir)), "ViT-B-32": load_model("openclip:ViT-B-32")}
                figures["forward"] = bench_forward(models, {"tiny": (256, 64), "ViT-B-32": (64, 224)}, args.reps, matmul)
                console.print(
                    _table(
                        "encode_image forward (inference_mode)",
                        figures["forward"],
                        {"images_per_s": ".1f", "gflop_per_image": ".3f", "gflops": ".0f", "share_of_matmul": ".0%"},
                    )
                )
            if "run" in args.parts:
                ckpts = {"tiny": str(tiny_dir), "ViT-B-32": "openclip:ViT-B-32"}
                figures["run"] = bench_run(ckpts, args.n_val, ("fp32", "bf16"), args.workers)
                console.print(
                    _table(
                        "sparc-eval run --task synth-cls (whole path)", figures["run"], {"images_per_s": ".1f", "wall_s": ".1f"}
                    )
                )
    if "peer" in args.parts:
        figures["peer"] = bench_peer(args.peer_images, args.peer_image_size, args.peer_reps, args.workers, 64)
        title = (
            f"zero-shot classification, {args.peer_images} SynthScenes images at {args.peer_image_size} px, random-init ViT-B-32, "
            f"{torch.get_num_threads()} threads, {args.workers} workers"
        )
        console.print(_table(title, figures["peer"], {"images_per_s": ".2f", "x_clip_benchmark_fp32": ".2f", "top1": ".2f"}))
    if "retrieval" in args.parts:
        figures["retrieval"] = bench_retrieval(args.captions, args.chunk)
        console.print(
            _table(
                f"retrieval_ranks, blocks of {args.chunk}",
                figures["retrieval"],
                {k: ".1f" for k in ("tensor_peak_mib", "rss_peak_added_mib", "inputs_mib", "seconds", "full_matrix_mib")},
            )
        )
    console.print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

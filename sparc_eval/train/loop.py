"""The pretraining loop, single process or under torchrun (DDP: gloo on CPU, nccl on GPU).

AdamW (betas 0.9/0.98, eps 1e-6 as open_clip trains CLIP ViTs; no weight decay on 1-d parameters:
biases, norms, the class token, the temperature), linear warm-up then cosine decay (paper App. D.4),
gradient-norm clipping, optional bf16 autocast (the losses are computed in fp32), the inverse
temperature clamped at 100 after every step as in CLIP. `batch_size` is the global batch: under
torchrun each of the W ranks takes its 1/W slice of the same draw, the global loss gathers embeddings
across ranks with gradients, and the fine-grained loss stays local, so W processes reproduce the
single-process run. Every `log_every` steps the fine-grained loss is also measured on mismatched pairs
(the batch's captions rolled by one, no gradient) to expose a loss solved without reading the caption.
Batches come through a DataLoader over steps with `num_workers` worker processes (sparc_eval.train.batches),
from image-text pairs or webdataset shards. Every `eval_every` steps rank 0 writes the current weights as a
checkpoint and hands it to the `evaluate` callback (the CLI's scores it on the --eval-task cards), while the
other ranks wait at a barrier; losses and metrics also go to the reporters (sparc_eval.train.reporting).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import write_jsonl_atomic
from sparc_eval.models.checkpoint import (
    atomic_folder,
    load_state_dict_checked,
    read_config,
    read_safetensors,
    write_checkpoint_files,
)
from sparc_eval.models.objectives import build_objective, sparc_alignment_weights, sparc_fine_grained_loss
from sparc_eval.models.sparc import MAX_LOGIT_SCALE, create_model
from sparc_eval.progress import console as progress_console
from sparc_eval.progress import make_progress
from sparc_eval.provenance import git_revision, numerics, package_versions
from sparc_eval.train.batches import batch_loader, open_batches
from sparc_eval.train.curves import plot_loss_curves
from sparc_eval.train.objective_state import load_objective_state, write_objective_state
from sparc_eval.train.reporting import REPORTERS, make_reporters, scalars
from sparc_eval.train.state import load_train_state, save_train_state

BETAS = (0.9, 0.98)
EPS = 1e-6
LOG_FILE = "train_log.jsonl"
TEXT_ATTENTION = ("causal", "bidirectional")
CURVE_FILE = "loss_curve.png"
# Settings a resumed run must share with the run it continues (log/save cadence and world size may change).
_RUN_KEYS = (
    "arch",
    "text_attention",
    "objective",
    "steps",
    "batch_size",
    "lr",
    "warmup",
    "weight_decay",
    "grad_clip",
    "seed",
    "bf16",
)


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "tiny"
    objective: str = "sparc"
    objective_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"lambda_f": 5.0, "sparsity": False}
    text_attention: str = "causal"  # "causal" (open_clip's text tower) or "bidirectional" (padding masked)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool = False
    save_every: int = 0  # 0: no periodic checkpoints
    log_every: int = 10
    resume: bool = False
    device: str | None = None  # None: cuda:LOCAL_RANK when CUDA is available, else cpu
    num_workers: int = 0  # DataLoader worker processes per rank decoding the batches (0: the training process)
    report_to: tuple[str, ...] = ()  # "tensorboard", "wandb" (sparc_eval.train.reporting)
    log_dir: str | None = None  # reporters' files and evaluation records; None: OUT.logs beside the checkpoint
    eval_every: int = 0  # call train()'s `evaluate` every N steps (0: never)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise SparcEvalError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "save_every", "num_workers", "eval_every"):
            if getattr(self, name) < 0:
                raise SparcEvalError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SparcEvalError(f"--lr must be a finite positive number, got {self.lr}")
        if self.text_attention not in TEXT_ATTENTION:
            raise SparcEvalError(f"--text-attention must be one of {', '.join(TEXT_ATTENTION)}, got {self.text_attention!r}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise SparcEvalError(f"--{name.replace('_', '-')} must be a finite number at least 0, got {value}")
        for kind in self.report_to:
            if kind not in REPORTERS:
                raise SparcEvalError(f"--report-to must be one of {', '.join(REPORTERS)}, got {kind!r}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps to `lr`, then cosine decay to 0 at `steps` (open_clip's cosine_lr)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        # The fused kernel is several times faster on CPU (the 49408-row token table dominates the update).
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=BETAS, eps=EPS, fused=True)
    except RuntimeError:  # torch < 2.4 has no fused CPU AdamW; devices without a fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=BETAS, eps=EPS)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_step(
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    tokens: torch.Tensor,
    *,
    grad_clip: float,
    bf16: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One optimisation step; returns the loss parts and the (fp32) model outputs it used."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(images, tokens)
    # Min-max normalisation and thresholds in bf16 would quantise the alignment weights: losses run in fp32.
    out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
    parts = objective(out)
    optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    _average_objective_grads(objective)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_([*model.parameters(), *objective.parameters()], grad_clip)
    optimizer.step()
    with torch.no_grad():
        _unwrap(model).log_logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
    return parts, out


def _average_objective_grads(objective: nn.Module) -> None:
    """An objective's own parameters (MGCA's prototypes) sit outside DDP: average their gradients over ranks here."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for param in objective.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= dist.get_world_size()


def build_model_and_objective(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The objective, and a fresh model with the parts it needs (its MODEL_CONFIG) and the text attention asked
    for; then the objective's own state (setup), drawn from the seeded RNG after the model's."""
    objective = build_objective(cfg.objective, **cfg.objective_options)
    overrides: dict[str, Any] = dict(getattr(objective, "MODEL_CONFIG", {}))
    if cfg.text_attention == "bidirectional":
        overrides["text_cfg"] = {"no_causal_mask": True}
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, **overrides)
    if hasattr(objective, "setup"):
        objective.setup(model)
    return model.to(device), objective.to(device)


@torch.no_grad()
def fine_diagnostics(out: dict[str, torch.Tensor], sparsity: bool = True, weights: str = "sparse") -> dict[str, torch.Tensor]:
    """Fine-grained loss on matched pairs and on mismatched ones (captions rolled by one within the batch),
    and the share of patches that keep a non-zero alignment weight, averaged over real tokens."""
    tok, mask, patch, scale = (out[k].detach() for k in ("token_emb", "token_mask", "patch_emb", "logit_scale"))
    opts = {"sparsity": sparsity, "weights": weights}
    align = sparc_alignment_weights(tok, patch, **opts)
    return {
        "fine_matched": sparc_fine_grained_loss(tok, mask, patch, scale, **opts),
        "fine_mismatched": sparc_fine_grained_loss(tok.roll(1, 0), mask.roll(1, 0), patch, scale, **opts),
        "align_nonzero": (align > 0).float().mean(-1)[mask].mean(),
    }


def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group) from torchrun's environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, False
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), created


def _pick_device(cfg: TrainConfig) -> torch.device:
    """The device asked for (plain "cuda" is cuda:LOCAL_RANK: one GPU per torchrun process), made current for CUDA so
    that NCCL collectives and pinned copies use it."""
    if cfg.device:
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise SparcEvalError(f"unknown device {cfg.device!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SparcEvalError(f"device {cfg.device!r} asked for but no CUDA device is available")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        return torch.device("cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise SparcEvalError(f"device {device} asked for but this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(device)
    return device


def _mean_over_ranks(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if world > 1:
        dist.all_reduce(stacked)
        stacked /= world
    return dict(zip(values, stacked.tolist()))


def _run_settings(cfg: TrainConfig, objective: nn.Module) -> dict[str, Any]:
    return {
        "arch": cfg.arch,
        "text_attention": cfg.text_attention,
        "objective": objective.describe(),
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "warmup": cfg.warmup,
        "weight_decay": cfg.weight_decay,
        "grad_clip": cfg.grad_clip,
        "seed": cfg.seed,
        "bf16": cfg.bf16,
    }


def periodic_dir(out: str | os.PathLike) -> Path:
    """Where periodic checkpoints of the run writing `out` live until it finishes."""
    out = Path(out)
    return out.with_name(out.name + ".periodic")


def _latest_periodic(folder: Path) -> Path | None:
    found = sorted(folder.glob("step_*")) if folder.is_dir() else []
    return found[-1] if found else None


def log_dir(cfg: TrainConfig) -> Path:
    """Where the reporters and the evaluations during training write: --log-dir, else OUT.logs beside the checkpoint."""
    out = Path(cfg.out)
    return Path(cfg.log_dir) if cfg.log_dir else out.with_name(out.name + ".logs")


@contextlib.contextmanager
def _rng_kept():
    """Run a block (an evaluation during training) without touching the random state the training continues from."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def train(cfg: TrainConfig, evaluate: Callable[[int, Path], dict[str, float]] | None = None) -> Path | None:
    """Train as configured; write the checkpoint folder `cfg.out` and return its path (None on ranks other than 0).

    `evaluate(step, checkpoint_folder)`, called on rank 0 every cfg.eval_every steps, scores a checkpoint of the
    current weights and returns metrics {"TASK/METRIC": value} for the reporters."""
    cfg.validate()
    out, periodic = Path(cfg.out), periodic_dir(cfg.out)
    if out.exists():
        raise SparcEvalError(f"output {out} already exists; choose another --out or remove it")
    if not cfg.resume and _latest_periodic(periodic):
        raise SparcEvalError(
            f"{periodic} holds checkpoints of an unfinished run; pass --resume to continue it or remove the folder"
        )
    device = _pick_device(cfg)
    if device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace; read when cuBLAS first starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    model, objective = build_model_and_objective(cfg, device)
    batches = open_batches(cfg.data, cfg.batch_size, cfg.seed, transform=model.preprocess)
    optimizer = make_optimizer(nn.ModuleList([model, objective]), cfg)
    settings = _run_settings(cfg, objective)
    data_card = batches.describe()

    start, rows, elapsed_before = 0, [], 0.0
    resume_from = _latest_periodic(periodic) if cfg.resume else None
    if resume_from is not None:
        start, rows, elapsed_before = _resume(resume_from, model, optimizer, settings, data_card)
        load_objective_state(objective, resume_from)
    elif cfg.resume and int(os.environ.get("RANK", "0")) == 0:
        progress_console.print(f"nothing to resume in {periodic}: starting at step 0", highlight=False)

    # Deterministic kernels wherever an op has a choice (CUDA index/scatter ops). On CPU the measured weights are the
    # same bits with and without it (README, "What a seed reproduces"); the previous setting is restored on return.
    deterministic_before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    rank, world, created_group = _init_distributed(device)
    try:
        if cfg.batch_size % world:
            raise SparcEvalError(f"--batch-size {cfg.batch_size} must be divisible by the number of processes ({world})")
        local = cfg.batch_size // world
        net = (
            nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            if world > 1
            else model
        )
        # Diagnostics use the objective's alignment settings; for CLIP, the paper's defaults.
        sparsity = getattr(objective, "sparsity", True)
        weights = getattr(objective, "weights", "sparse")

        def card(steps_done: int, seconds: float) -> dict[str, Any]:
            return {
                "objective": objective.describe(),
                "training": {
                    **settings,
                    "steps_done": steps_done,
                    "world_size": world,
                    "num_workers": cfg.num_workers,
                    "optimizer": "AdamW",
                    "betas": list(BETAS),
                    "eps": EPS,
                    "schedule": "linear warm-up + cosine",
                    "train_seconds": round(seconds, 1),
                },
                "data": {"path": str(cfg.data), **data_card},
                "provenance": {
                    "git_revision": git_revision(),
                    "versions": package_versions(),
                    "numerics": numerics(),  # what besides the seed decides the weights' bits (README)
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                },
            }

        progress = make_progress() if rank == 0 else None
        task = (
            progress.add_task(f"train {cfg.objective} {cfg.arch}", total=cfg.steps, completed=start, info="")
            if progress
            else None
        )
        reporters = (
            make_reporters(cfg.report_to, log_dir(cfg), out=cfg.out, start_step=start, config=settings) if rank == 0 else []
        )
        loader = batch_loader(
            batches,
            start=start,
            steps=cfg.steps,
            rank=rank,
            local=local,
            tokenize=model.tokenizer,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            seed=cfg.seed,
        )
        t_start, t_window, n_window = time.perf_counter(), time.perf_counter(), 0
        net.train()
        with progress or contextlib.nullcontext(), contextlib.ExitStack() as closing:
            for reporter in reporters:
                closing.callback(reporter.close)
            for step, (images, tokens) in zip(range(start, cfg.steps), loader):
                lr = learning_rate(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # From pinned memory (CUDA) these copies overlap the step's work.
                images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
                parts, outputs = train_step(net, objective, optimizer, images, tokens, grad_clip=cfg.grad_clip, bf16=cfg.bf16)
                n_window += cfg.batch_size
                done = step + 1
                # One host sync a step: a NaN would otherwise train on silently and be saved as a checkpoint.
                if not torch.isfinite(parts["total"]).item():
                    shown = ", ".join(f"{k} {v.item():.4g}" for k, v in parts.items() if v.numel() == 1)
                    raise SparcEvalError(
                        f"training stopped at step {done}: the {cfg.objective} loss is not finite ({shown}); "
                        "no checkpoint written; lower --lr or check the objective's options"
                    )
                if done % cfg.log_every == 0 or done == cfg.steps:
                    now = time.perf_counter()
                    values = _mean_over_ranks({**parts, **fine_diagnostics(outputs, sparsity, weights)}, world)
                    row = {
                        "step": done,
                        "lr": lr,
                        "loss": values.pop("total"),
                        **values,
                        "logit_scale": model.logit_scale.item(),
                        "samples_per_s": n_window / (now - t_window),
                        "elapsed_s": elapsed_before + now - t_start,
                    }
                    rows.append(row)
                    for reporter in reporters:
                        reporter.log(done, scalars(row, "train"))
                    t_window, n_window = now, 0
                    if progress:
                        # Only "total" is promised by every objective (a plugin's may have no global or fine part).
                        terms = "".join(f" {abbr} {row[k]:.3f}" for k, abbr in (("global", "g"), ("fine", "f")) if k in row)
                        info = (
                            f"loss {row['loss']:.3f}{terms} | fine matched {row['fine_matched']:.3f} "
                            f"vs mismatched {row['fine_mismatched']:.3f} | {row['samples_per_s']:.0f} samples/s"
                        )
                        progress.update(task, info=info)
                        if not progress.disable and not progress.console.is_terminal:  # a log file gets no live bar
                            progress.console.print(f"step {done}/{cfg.steps}: {info}", highlight=False)
                if progress:
                    progress.advance(task)
                if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps and rank == 0:
                    _save_periodic(
                        periodic,
                        done,
                        model,
                        objective,
                        optimizer,
                        card(done, elapsed_before + time.perf_counter() - t_start),
                        rows,
                    )
                if evaluate is not None and cfg.eval_every and done % cfg.eval_every == 0:
                    began = time.perf_counter()
                    if rank == 0:
                        snapshot = card(done, elapsed_before + began - t_start)
                        metrics = _evaluate_at(done, model, objective, snapshot, evaluate, log_dir(cfg))
                        for reporter in reporters:
                            reporter.log(done, scalars(metrics, "eval"))
                    if world > 1:
                        dist.barrier()  # the other ranks wait here while rank 0 evaluates
                    t_window += time.perf_counter() - began  # samples/s counts training time only
        if rank == 0:
            options = ", ".join(f"{k} {v}" for k, v in objective.describe().items() if k != "name")
            title = f"{cfg.objective} ({options or 'global loss only'}) | {cfg.arch}, batch {cfg.batch_size}, {cfg.steps} steps"
            with atomic_folder(out) as tmp:
                write_checkpoint_files(tmp, model, **card(cfg.steps, elapsed_before + time.perf_counter() - t_start))
                write_objective_state(tmp, objective)
                write_jsonl_atomic(tmp / LOG_FILE, rows)
                plot_loss_curves(rows, tmp / CURVE_FILE, title)
            shutil.rmtree(periodic, ignore_errors=True)
        if world > 1:
            dist.barrier()
    finally:
        if created_group:
            dist.destroy_process_group()
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])
    return out if rank == 0 else None


def _evaluate_at(
    step: int,
    model: nn.Module,
    objective: nn.Module,
    card: dict,
    evaluate: Callable[[int, Path], dict[str, float]],
    folder: Path,
) -> dict[str, float]:
    """Write the current weights as checkpoint folder/checkpoints/step_N, call `evaluate` on it with the training's
    random state kept aside, and remove the checkpoint again (the records keep its sha256)."""
    snapshot = folder / "checkpoints" / f"step_{step:07d}"
    if snapshot.exists():  # left by a run that was killed while evaluating
        shutil.rmtree(snapshot)
    with atomic_folder(snapshot) as tmp:
        write_checkpoint_files(tmp, model, **card)
        write_objective_state(tmp, objective)
    try:
        with _rng_kept():
            return evaluate(step, snapshot)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _save_periodic(
    folder: Path,
    step: int,
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    card: dict,
    rows: list[dict],
) -> None:
    """Write step_NNNNNNN/ (a loadable checkpoint plus optimizer/RNG state and the log so far), then drop older ones."""
    target = folder / f"step_{step:07d}"
    with atomic_folder(target) as tmp:
        write_checkpoint_files(tmp, model, **card)
        write_objective_state(tmp, objective)
        save_train_state(tmp, optimizer, {"step": step, "schedule": {"kind": "warmup-cosine", "next_step": step}})
        write_jsonl_atomic(tmp / LOG_FILE, rows)
    for old in folder.iterdir():
        if old != target:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def _resume(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, settings: dict, data_card: dict
) -> tuple[int, list[dict], float]:
    """Load weights, optimizer and RNG state from periodic checkpoint `folder`; return (step, log rows, seconds so far)."""
    import json

    config = read_config(folder)
    saved = config.get("training", {})
    if not isinstance(saved, dict) or not isinstance(config.get("data", {}), dict):
        raise SparcEvalError(f"cannot resume from {folder}: its config.json has no training and data sections")
    for key in _RUN_KEYS:
        if saved.get(key) != settings[key]:
            raise SparcEvalError(
                f"cannot resume from {folder}: it was trained with {key}={saved.get(key)!r}, this run asks for {settings[key]!r}"
            )
    identity = "pairs_sha256" if "pairs_sha256" in data_card else "shards_sha256"
    if config.get("data", {}).get(identity) != data_card[identity]:
        source = data_card.get("pairs_file") or data_card.get("shards")
        raise SparcEvalError(f"cannot resume from {folder}: its training data differs from {source}")
    weights = folder / "model.safetensors"
    load_state_dict_checked(model, read_safetensors(weights), weights, settings["arch"])
    info = load_train_state(folder, optimizer, steps=settings["steps"])
    log = folder / LOG_FILE
    try:
        lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
        rows = [json.loads(line) for line in lines if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparcEvalError(f"cannot resume from {folder}: {log} does not read ({exc})") from None
    seconds = saved.get("train_seconds", 0.0)
    return info["step"], rows, float(seconds) if isinstance(seconds, (int, float)) else 0.0

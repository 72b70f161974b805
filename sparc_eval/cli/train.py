"""`sparc-eval train`: pretrain a model."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import app, console
from sparc_eval.errors import SparcEvalError


@app.command("train")
def train_cmd(
    data: Path = typer.Option(
        ...,
        "--data",
        help="Training pairs: a .jsonl/.csv file (columns image, caption), a folder with train.jsonl, or a SynthScenes root.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Checkpoint folder to write (must not exist); periodic checkpoints go to OUT.periodic/ until the run ends.",
    ),
    arch: str = typer.Option("tiny", "--arch", help="Model preset (tiny, vit-b-16) or an open_clip ViT architecture name."),
    objective: str = typer.Option("sparc", "--objective", help="sparc (global + fine-grained) or clip (global only)."),
    no_sparsity: bool = typer.Option(
        False, "--no-sparsity", help="SPARC ablation: keep every min-max normalised similarity (no 1/P threshold)."
    ),
    softmax_weights: bool = typer.Option(
        False, "--softmax-weights", help="SPARC ablation: alignment weights = softmax over patches of the raw similarities."
    ),
    lambda_f: float | None = typer.Option(
        None, "--lambda-f", help="SPARC fine-grained loss weight (default 1.0; the paper sweeps 0.5, 1, 5, 10)."
    ),
    lambda_g: float | None = typer.Option(None, "--lambda-g", help="SPARC global loss weight (default 0.5, as in the paper)."),
    lambda_images: float | None = typer.Option(
        None,
        "--lambda-images",
        help="Weight of an extra loss asking each token's grouped patches to come from its own image rather than 7 others (default 0: off, as in the paper; see docs/grounding.md).",
    ),
    fine_tokens: str = typer.Option(
        "all",
        "--fine-tokens",
        help="Tokens in the fine-grained loss: all (the paper) or unique (only words that occur once in their caption; see docs/grounding.md).",
    ),
    steps: int = typer.Option(1000, "--steps", help="Optimisation steps."),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch size (split evenly over torchrun processes)."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW)."),
    warmup: int = typer.Option(50, "--warmup", help="Linear warm-up steps before the cosine decay."),
    weight_decay: float = typer.Option(
        0.1, "--weight-decay", help="AdamW weight decay (not applied to biases, norms, temperature)."
    ),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Clip the gradient norm to this (0 = off)."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the initialisation and of the batch draws; same seed, same losses on CPU."
    ),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast for the towers (losses stay fp32)."),
    save_every: int = typer.Option(0, "--save-every", help="Write a periodic checkpoint every K steps (0 = off)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last periodic checkpoint in OUT.periodic/ (starts afresh if there is none)."
    ),
    log_every: int = typer.Option(
        10, "--log-every", help="Log losses, and fine loss on matched vs mismatched pairs, every N steps."
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK if available, else cpu)."
    ),
) -> None:
    """Train a SPARC (or CLIP) model on image-text pairs; writes model.safetensors, config.json, train_log.jsonl and loss_curve.png.

    Runs unchanged under torchrun (DDP: gloo on CPU, nccl on GPU).

    Example: sparc-eval train --data data/synthscenes --arch tiny --objective sparc --steps 300 --batch-size 64 --out runs/tiny-sparc
    """
    import time

    from sparc_eval.train.loop import LOG_FILE, TrainConfig, train

    sparc_only = {
        "--no-sparsity": no_sparsity,
        "--softmax-weights": softmax_weights,
        "--lambda-f": lambda_f is not None,
        "--lambda-g": lambda_g is not None,
        "--lambda-images": lambda_images is not None,
        "--fine-tokens": fine_tokens != "all",
    }
    options: dict = {}
    if objective == "sparc":
        options = {"sparsity": not (no_sparsity or softmax_weights), "weights": "softmax" if softmax_weights else "sparse"}
        named = {
            "lambda_f": lambda_f,
            "lambda_g": lambda_g,
            "lambda_images": lambda_images,
            "fine_tokens": None if fine_tokens == "all" else fine_tokens,
        }
        options.update({k: v for k, v in named.items() if v is not None})
    elif any(sparc_only.values()):
        raise SparcEvalError(
            f"{next(k for k, v in sparc_only.items() if v)} applies only to --objective sparc, not {objective!r}"
        )
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        arch=arch,
        objective=objective,
        objective_options=options,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        seed=seed,
        bf16=bf16,
        save_every=save_every,
        log_every=log_every,
        resume=resume,
        device=device,
    )
    started = time.perf_counter()
    path = train(cfg)
    if path is not None:  # only rank 0 writes the checkpoint
        import json

        last = json.loads((path / LOG_FILE).read_text(encoding="utf-8").splitlines()[-1])
        parts = ", ".join(
            f"{k} {last[k]:.4f}" for k in ("loss", "global", "fine", "fine_matched", "fine_mismatched") if k in last
        )
        console.print(f"wrote {path} in {time.perf_counter() - started:.0f}s; step {last['step']}: {parts}", highlight=False)

"""`sparc-eval train`: pretrain a model."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import app, console
from sparc_eval.errors import SparcEvalError
from sparc_eval.models.objectives import OptionError


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
    objective: str = typer.Option(
        "sparc",
        "--objective",
        help="Training objective: clip (global only), sparc, filip, pacl, gloria, mgca, or one a plugin registers (docs/objectives.md).",
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        help="KEY=VALUE: an objective option without a flag of its own, e.g. --option tau1=4 (gloria); repeatable. Each objective's options: docs/objectives.md.",
    ),
    text_attention: str = typer.Option(
        "causal", "--text-attention", help="Text tower attention: causal (open_clip's default) or bidirectional (padding masked)."
    ),
    no_sparsity: bool = typer.Option(
        False, "--no-sparsity", help="SPARC ablation: keep every min-max normalised similarity (no 1/P threshold)."
    ),
    softmax_weights: bool = typer.Option(
        False, "--softmax-weights", help="SPARC ablation: alignment weights = softmax over patches of the raw similarities."
    ),
    lambda_f: float | None = typer.Option(
        None,
        "--lambda-f",
        help="Weight of the objective's fine-grained (local) loss; default: the method's paper (sparc 1.0, filip/pacl/gloria/mgca 1.0).",
    ),
    lambda_g: float | None = typer.Option(
        None,
        "--lambda-g",
        help="Weight of the shared global loss; default: the method's paper (sparc 0.5, gloria/mgca 1.0, filip/pacl 0: their losses have no global term).",
    ),
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
    """Train a model with a contrastive objective (SPARC, CLIP, FILIP, PACL, GLoRIA, MGCA) on image-text pairs; writes
    model.safetensors, config.json, train_log.jsonl and loss_curve.png.

    Runs unchanged under torchrun (DDP: gloo on CPU, nccl on GPU).

    Example: sparc-eval train --data data/synthscenes --arch tiny --objective sparc --steps 300 --batch-size 64 --out runs/tiny-sparc

    Example: sparc-eval train --data data/synthscenes --objective gloria --lambda-f 1 --option tau3=10 --out runs/tiny-gloria
    """
    import time

    from sparc_eval.cli import checks
    from sparc_eval.train.loop import LOG_FILE, TrainConfig, train

    if not data.exists():
        raise SparcEvalError(f"--data {data} does not exist")
    checks.output_folder("--out", out, free_mib=64, must_not_exist=True)  # also with --resume: OUT appears at the end
    for flag, value in (("--lr", lr), ("--weight-decay", weight_decay), ("--grad-clip", grad_clip)):
        checks.finite(flag, value, minimum=0)
    for flag, value in (("--lambda-g", lambda_g), ("--lambda-f", lambda_f), ("--lambda-images", lambda_images)):
        checks.finite(flag, value)
    checks.seed("--seed", seed)
    given = {
        "--lambda-g": lambda_g,
        "--lambda-f": lambda_f,
        "--lambda-images": lambda_images,
        "--fine-tokens": None if fine_tokens == "all" else fine_tokens,
        "--no-sparsity": False if no_sparsity else None,
        "--softmax-weights": "softmax" if softmax_weights else None,
    }
    options = objective_options_from_flags(objective, {k: v for k, v in given.items() if v is not None}, option)
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        arch=arch,
        objective=objective,
        objective_options=options,
        text_attention=text_attention,
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
    try:
        path = train(cfg)
    except OptionError as exc:  # name the flag that set the bad value
        raise SparcEvalError(f"{_flag_of(exc.option)} {exc.requirement}, got {exc.value!r}") from None
    if path is not None:  # only rank 0 writes the checkpoint
        import json

        last = json.loads((path / LOG_FILE).read_text(encoding="utf-8").splitlines()[-1])
        parts = ", ".join(
            f"{k} {last[k]:.4f}" for k in ("loss", "global", "fine", "fine_matched", "fine_mismatched") if k in last
        )
        console.print(f"wrote {path} in {time.perf_counter() - started:.0f}s; step {last['step']}: {parts}", highlight=False)


# Objective options that have a flag of their own; --option refuses these keys, so that each is set one way.
FLAG_OPTIONS = {
    "--lambda-g": "lambda_g",
    "--lambda-f": "lambda_f",
    "--lambda-images": "lambda_images",
    "--fine-tokens": "fine_tokens",
    "--no-sparsity": "sparsity",
    "--softmax-weights": "weights",
}


def _flag_of(option: str) -> str:
    return next((flag for flag, name in FLAG_OPTIONS.items() if name == option), f"--option {option}")


def _parse_value(text: str) -> bool | int | float | str:
    """A --option value: true/false, an integer, a number, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def objective_options_from_flags(objective: str, given: dict[str, object], pairs: list[str]) -> dict:
    """Objective options from the named flags that were given ({flag: value}) and the --option KEY=VALUE pairs,
    each checked against the options `objective` takes (an unknown objective names the known ones)."""
    from sparc_eval.models.objectives import objective_options

    allowed = objective_options(objective)

    def refuse(what: str) -> SparcEvalError:
        return SparcEvalError(f"{what} does not apply to --objective {objective} (its options: {', '.join(allowed) or 'none'})")

    options: dict = {}
    for flag, value in given.items():
        if FLAG_OPTIONS[flag] not in allowed:
            raise refuse(flag)
        options[FLAG_OPTIONS[flag]] = value
    if options.get("weights") == "softmax":
        options["sparsity"] = False  # the softmax ablation replaces min-max normalisation and thresholding
    for pair in pairs:
        key, sep, text = (part.strip() for part in pair.partition("="))
        if not sep or not key:
            raise SparcEvalError(f"--option {pair!r} must look like KEY=VALUE, e.g. --option tau1=4")
        if key in FLAG_OPTIONS.values():
            raise SparcEvalError(f"--option {key}: set it with {_flag_of(key)}")
        if key not in allowed:
            raise refuse(f"--option {key}")
        if key in options:
            raise SparcEvalError(f"--option {key} is given twice")
        options[key] = _parse_value(text)
    return options

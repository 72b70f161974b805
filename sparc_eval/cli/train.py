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
        None,
        "--device",
        help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK if available, else cpu). On CUDA add --bf16 for bf16 autocast.",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        "--num-workers",
        help="DataLoader worker processes per process decoding batches (default: half the CPUs per process, at most 8; env SPARC_EVAL_NUM_WORKERS).",
    ),
    report_to: list[str] = typer.Option(
        [], "--report-to", help="tensorboard or wandb (repeatable): log losses, learning rate, samples/s and evaluation metrics."
    ),
    log_dir: Path | None = typer.Option(
        None, "--log-dir", help="Folder for the reporters and the evaluations during training (default: OUT.logs)."
    ),
    eval_every: int = typer.Option(
        0, "--eval-every", help="Score the current weights on the --eval-task cards every N steps (0 = off)."
    ),
    eval_task: list[str] = typer.Option(
        [], "--eval-task", help="Task card (name or path) scored every --eval-every steps, e.g. synth-retrieval; repeatable."
    ),
    eval_data_dir: Path = typer.Option(Path("data"), "--eval-data-dir", help="Data folder of the --eval-task cards."),
    eval_limit: int | None = typer.Option(None, "--eval-limit", help="Score only the first N items of each --eval-task."),
) -> None:
    """Train a model with a contrastive objective (SPARC, CLIP, FILIP, PACL, GLoRIA, MGCA) on image-text pairs; writes
    model.safetensors, config.json, train_log.jsonl and loss_curve.png.

    Runs unchanged under torchrun (DDP: gloo on CPU, nccl on GPU).

    Example: sparc-eval train --data data/synthscenes --arch tiny --objective sparc --steps 300 --batch-size 64 --out runs/tiny-sparc

    Example: sparc-eval train --data data/synthscenes --objective gloria --lambda-f 1 --option tau3=10 --out runs/tiny-gloria

    Example: sparc-eval train --data 'data/shards/{000000..000031}.tar' --report-to tensorboard --eval-every 500 --eval-task synth-retrieval --out runs/b16
    """
    import time

    from sparc_eval.cli import checks
    from sparc_eval.train.loop import LOG_FILE, TrainConfig, train
    from sparc_eval.train.shards import is_shard_source

    if is_shard_source(data):
        from sparc_eval.cli.shards import require_webdataset

        require_webdataset("--data with webdataset shards")
    elif not data.exists():
        raise SparcEvalError(f"--data {data} does not exist")
    checks.workers("--workers", workers)
    checks.at_least("--eval-every", eval_every, 0)
    checks.at_least("--eval-limit", eval_limit, 1)
    evaluate = _evaluation_during_training(eval_every, eval_task, out, log_dir, eval_data_dir, eval_limit, device, workers)
    _require_reporters(report_to)
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
        num_workers=_default_workers() if workers is None else workers,
        report_to=tuple(report_to),
        log_dir=None if log_dir is None else str(log_dir),
        eval_every=eval_every,
    )
    started = time.perf_counter()
    try:
        path = train(cfg, evaluate=evaluate)
    except OptionError as exc:  # name the flag that set the bad value
        raise SparcEvalError(f"{_flag_of(exc.option)} {exc.requirement}, got {exc.value!r}") from None
    if path is not None:  # only rank 0 writes the checkpoint
        import json

        last = json.loads((path / LOG_FILE).read_text(encoding="utf-8").splitlines()[-1])
        parts = ", ".join(
            f"{k} {last[k]:.4f}" for k in ("loss", "global", "fine", "fine_matched", "fine_mismatched") if k in last
        )
        console.print(f"wrote {path} in {time.perf_counter() - started:.0f}s; step {last['step']}: {parts}", highlight=False)


def _default_workers() -> int:
    from sparc_eval.tasks.distributed import default_num_workers

    return default_num_workers()  # counts the processes torchrun starts on this node (LOCAL_WORLD_SIZE)


def _require_reporters(kinds: list[str]) -> None:
    """Each --report-to names a reporter whose library is installed (one line naming the extra otherwise)."""
    import importlib.util

    from sparc_eval.cli import checks
    from sparc_eval.train.reporting import REPORTERS

    for kind in kinds:
        checks.one_of("--report-to", kind, tuple(REPORTERS))
        module, extra = REPORTERS[kind]
        if importlib.util.find_spec(module) is None:
            raise SparcEvalError(
                f"--report-to {kind} needs the optional library {module!r}, which is not installed: pip install 'sparc-eval[{extra}]'"
            )


def _evaluation_during_training(
    every: int,
    tasks: list[str],
    out: Path,
    log_dir: Path | None,
    data_dir: Path,
    limit: int | None,
    device: str | None,
    workers: int | None,
):
    """The trainer's `evaluate` callback for --eval-every/--eval-task (None when off): each card is loaded and its
    optional libraries checked now, before any training; at step N rank 0 scores the step's checkpoint on each, alone
    (the other ranks wait), writing ordinary result records under LOG_DIR/eval, and returns {"TASK/METRIC": value}."""
    if bool(every) != bool(tasks):
        raise SparcEvalError("--eval-every and --eval-task go together: give both (or neither)")
    if not every:
        return None
    from sparc_eval.evaluation import check_requirements, run_evaluation
    from sparc_eval.tasks.card import load_card

    cards = [load_card(task) for task in tasks]
    for card in cards:
        check_requirements(card, str(out))
    results = (log_dir if log_dir is not None else out.with_name(out.name + ".logs")) / "eval"

    def evaluate(step: int, checkpoint: Path) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for card in cards:
            record = run_evaluation(
                str(checkpoint),
                card.path,
                out=results,
                data_dir=data_dir,
                limit=limit,
                device=device or ("cuda" if _cuda() else "cpu"),
                num_workers=workers,
                distributed=False,
            ).record
            metrics.update({f"{card.name}/{name}": m.value for name, m in record.metrics.items() if m.value is not None})
        return metrics

    return evaluate


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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

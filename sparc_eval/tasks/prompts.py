"""Prompt templates, class names and class text embeddings shared by every zero-shot runner.

Templates: a named set ("openai-imagenet": the 80 templates of the CLIP paper, from open_clip;
"simple": "a photo of a {}.") or a text file with one template per line, each holding "{}" where
the class name goes. Class names: a text file with one class per line, or a reader's class names;
a name may hold comma-separated synonyms, and every runner scores a class by its best synonym
(`best_synonym_scores`). Built-in class-name files ("imagenet": ILSVRC-2012 folder ids, in label
order, with open_clip's 1000 class names) are in the imagefolder reader's "<folder>TAB<name>" format.

A class embedding is the CLIP prompt ensemble (open_clip `build_zero_shot_classifier`,
CLIP_benchmark `zero_shot_classifier`): the mean of the L2-normalised embeddings of its prompts,
L2-normalised again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from sparc_eval import builtin
from sparc_eval.errors import SparcEvalError
from sparc_eval.progress import track
from sparc_eval.tasks.runner import RunContext

PLACEHOLDER = "{}"


def _openai_imagenet_templates() -> tuple[str, ...]:
    # Imported here: importing open_clip costs seconds, and most runs never need these.
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    # open_clip stores them as lambdas `lambda c: f"... {c} ..."`; calling one with "{}" gives the template.
    return tuple(t(PLACEHOLDER) for t in OPENAI_IMAGENET_TEMPLATES)


TEMPLATE_SETS: dict[str, Callable[[], tuple[str, ...]]] = {
    "openai-imagenet": _openai_imagenet_templates,
    "simple": lambda: ("a photo of a {}.",),
}
CLASSNAME_FILES: dict[str, Path] = {"imagenet": builtin.HERE / "classnames" / "imagenet.txt"}


def _resolve_file(ref: str, base_dir: Path | None) -> Path:
    path = Path(ref).expanduser()
    return base_dir / path if base_dir is not None and not path.is_absolute() else path


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SparcEvalError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SparcEvalError(f"{what} file {path} cannot be read ({exc.__class__.__name__})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are formatting, not entries
        lines.pop()
    if not lines:
        raise SparcEvalError(f"{what} file {path} is empty")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            raise SparcEvalError(f"{what} file {path}: line {lineno} is empty")
    return [line.strip() for line in lines]


def read_templates(path: str | Path) -> tuple[str, ...]:
    """Templates from a file, one per line, each holding "{}" exactly once ("{c}", CLIP_benchmark's placeholder in
    its webdatasets' zeroshot_classification_templates.txt, is read as "{}")."""
    path = Path(path)
    templates = [t.replace("{c}", PLACEHOLDER) if PLACEHOLDER not in t else t for t in _read_lines(path, "template")]
    for lineno, template in enumerate(templates, 1):
        if template.count(PLACEHOLDER) != 1:
            raise SparcEvalError(f"template file {path}: line {lineno} ({template!r}) must hold '{{}}' exactly once")
    return tuple(templates)


def split_synonyms(name: str, where: str) -> list[str]:
    """ "car, automobile" -> ["car", "automobile"] (the first is the main name); `where` names the source in errors."""
    synonyms = [s.strip() for s in name.split(",")]
    if not all(synonyms):
        raise SparcEvalError(f"{where}: class name {name!r} has an empty synonym")
    return synonyms


def read_classnames(path: str | Path) -> list[list[str]]:
    """Class names from a file: one class per line, comma-separated synonyms (the first is the main name)."""
    path = Path(path)
    return [
        split_synonyms(line, f"class-name file {path}, line {n}") for n, line in enumerate(_read_lines(path, "class-name"), 1)
    ]


def classname_file(name: str) -> Path:
    """The built-in class-name file called `name` (see CLASSNAME_FILES)."""
    if name not in CLASSNAME_FILES:
        raise SparcEvalError(f"unknown built-in class-name list {name!r}; known: {', '.join(sorted(CLASSNAME_FILES))}")
    return CLASSNAME_FILES[name]


def resolve_templates(ref: str, base_dir: Path | None = None) -> tuple[str, ...]:
    """A named template set, or a template file (a relative path is taken from `base_dir`)."""
    if ref in TEMPLATE_SETS:
        return TEMPLATE_SETS[ref]()
    return read_templates(_resolve_file(ref, base_dir))


def flatten_synonyms(classnames: Sequence[Sequence[str]]) -> tuple[list[str], torch.Tensor]:
    """All synonyms in class order, and the class index [S] each belongs to."""
    names = [name for synonyms in classnames for name in synonyms]
    owners = torch.tensor([c for c, synonyms in enumerate(classnames) for _ in synonyms], dtype=torch.long)
    return names, owners


def best_synonym_scores(scores: torch.Tensor, owners: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class scores [..., C] from per-synonym scores [..., S]: each class scores its best synonym."""
    if scores.shape[-1] == num_classes:  # one name per class: nothing to reduce
        return scores
    out = scores.new_full((*scores.shape[:-1], num_classes), float("-inf"))
    index = owners.to(scores.device).expand(*scores.shape[:-1], -1)
    return out.scatter_reduce(-1, index, scores, reduce="amax")


def class_text_embeddings(model, classnames: Sequence[str], templates: Sequence[str], ctx: RunContext) -> torch.Tensor:
    """Prompt-ensemble text embeddings [C, D] (float32, on ctx.device) of `classnames` under `templates`.

    Prompts are encoded in batches of ctx.batch_size, split among the ranks under torchrun and kept in the
    feature cache (per checkpoint, prompts and precision: ImageNet's 80,000 prompts are encoded once); the
    result is also kept for the rest of the run (ctx.memo), so runners and heads that ask for the same names
    and templates encode them once. With gradients on (a fit that trains the text tower) every call encodes
    afresh on this rank, through the cache-free path.
    """
    key = ("class_text_embeddings", id(model), tuple(classnames), tuple(templates))
    if key in ctx.memo:
        return ctx.memo[key]
    prompts = [template.replace(PLACEHOLDER, name) for name in classnames for template in templates]
    if torch.is_grad_enabled():
        batches = [prompts[i : i + ctx.batch_size] for i in range(0, len(prompts), ctx.batch_size)]
        chunks = []
        for batch in track(batches, "encoding class prompts"):
            tokens = model.tokenize(batch).to(ctx.device)
            with ctx.autocast():
                emb = model.encode_text(tokens)
            chunks.append(F.normalize(emb.float(), dim=-1))
        per_prompt = torch.cat(chunks)
    else:
        per_prompt = F.normalize(ctx.text_features(model, prompts, model.encode_text, "text"), dim=-1).to(ctx.device)
    embeddings = F.normalize(per_prompt.view(len(classnames), len(templates), -1).mean(dim=1), dim=-1)
    ctx.memo[key] = embeddings
    return embeddings

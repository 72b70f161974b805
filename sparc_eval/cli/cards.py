"""`sparc-eval cards validate`: check task and checkpoint cards without running them; the `--cards DIR` option
every command that takes cards shares."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import app, console, err_console

cards_app = typer.Typer(
    help="Check task and checkpoint cards.\n\nExample: sparc-eval cards validate tasks/ my-cards/probe.yaml",
    no_args_is_help=True,
)
app.add_typer(cards_app, name="cards")

CARDS_HELP = (
    "A folder of task and/or checkpoint cards, searched by name before the built-in cards; repeat for several "
    "(the SPARC_EVAL_CARDS environment variable adds more, os.pathsep-separated)."
)


def cards_option() -> list[Path]:
    """The shared `--cards DIR` option (repeatable)."""
    return typer.Option([], "--cards", help=CARDS_HELP, show_default=False)


def use_cards(dirs: list[Path]) -> None:
    from sparc_eval.card_files import use_card_dirs

    use_card_dirs(dirs)


def _card_files(paths: list[Path]) -> list[Path]:
    """The card files named by `paths` (files as given; a folder gives its *.yaml / *.yml files)."""
    from sparc_eval.card_files import SUFFIXES

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file())
        else:
            files.append(path)
    return files


def validate_card_file(path: Path) -> str:
    """Load the card at `path` completely, as `run` or `quickstart` would (no data read, no model built); its kind."""
    from sparc_eval.card_files import SUFFIXES, TASK, read_card, search_dirs
    from sparc_eval.errors import SparcEvalError

    if path.suffix not in SUFFIXES:
        raise SparcEvalError(f"card {path} is not a .yaml or .yml file")
    kind, _ = read_card(path)
    if kind == TASK:
        from sparc_eval.tasks.card import load_card

        name = load_card(str(path)).name
    else:
        from sparc_eval.checkpoint_cards import load_checkpoint_card

        name = load_checkpoint_card(str(path)).name
    if path.parent.resolve() in {d.resolve() for d in search_dirs(kind)} and name != path.stem:
        raise SparcEvalError(
            f"{kind} {path}: its name {name!r} differs from its file name; a card in a card folder is found by it"
        )
    return kind


@cards_app.command("validate")
def validate(
    paths: list[Path] = typer.Argument(
        None, help="Card files or folders of cards; none: every built-in card and every card in the card folders."
    ),
    cards: list[Path] = cards_option(),
) -> None:
    """Check cards without running them: their keys and types, reader options, runner params, training recipes.

    One line per bad card on stderr and exit code 2 if any is bad; a summary otherwise.

    Example: sparc-eval cards validate tasks/ checkpoints/tiny-sparc.yaml
    """
    from collections import Counter

    from rich.markup import escape

    from sparc_eval.builtin import builtin_dir
    from sparc_eval.card_files import user_card_dirs
    from sparc_eval.errors import SparcEvalError

    use_cards(cards)
    everything = [*user_card_dirs(), builtin_dir("tasks"), builtin_dir("checkpoints")]
    files = _card_files(paths or [d for d in everything if d.is_dir()])
    if not files:
        raise SparcEvalError(f"no card files (*.yaml, *.yml) in {', '.join(map(str, paths))}")
    kinds: Counter[str] = Counter()
    bad = 0
    for path in files:
        try:
            kinds[validate_card_file(path)] += 1
        except SparcEvalError as exc:
            bad += 1
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(2)
    counts = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(kinds.items()))
    console.print(f"{len(files)} card{'s' if len(files) != 1 else ''} valid ({counts})", highlight=False)

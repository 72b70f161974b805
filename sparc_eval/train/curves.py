"""The loss-curve figure written beside a trained checkpoint."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curves(rows: list[dict], path: Path, title: str) -> None:
    """Left: training losses (global, fine, image negatives when on). Right: fine-grained loss on matched vs mismatched pairs.

    Matched ~= mismatched means the fine-grained loss is solved without looking at the caption's content
    (FINDINGS.md: a positional shortcut), so the gap between the two curves is the thing to watch.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    if all("global" in r for r in rows):  # every objective reports "total"; the parts are its own
        left.plot(steps, [r["global"] for r in rows], label="global (contrastive)")
    if all("fine" in r for r in rows):
        left.plot(steps, [r["fine"] for r in rows], label="fine-grained (trained)")
    if all("images" in r for r in rows):
        left.plot(steps, [r["images"] for r in rows], label="image negatives (trained)")
    left.plot(steps, [r["loss"] for r in rows], label="total", color="0.4", linestyle=":")
    left.set(xlabel="step", ylabel="loss", title="training losses")
    right.plot(steps, [r["fine_matched"] for r in rows], label="matched pairs")
    right.plot(steps, [r["fine_mismatched"] for r in rows], label="mismatched (captions rolled by one)")
    right.set(xlabel="step", ylabel="fine-grained loss", title="fine-grained loss: matched vs mismatched")
    for ax in (left, right):
        ax.set_yscale("log")  # the fine-grained loss can fall by orders of magnitude (FINDINGS.md)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)

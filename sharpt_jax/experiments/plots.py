"""The figures of the experiments and reports: curves with error bars, skill-usage heatmaps, task relations.

Each function draws from plain numbers (no run folders) and writes one PNG; matplotlib draws to files only.
"""

from pathlib import Path

import matplotlib
import numpy as np

from sharpt_jax import storage

matplotlib.use("Agg")  # Files only; no display.
import matplotlib.pyplot as plt  # noqa: E402

Curve = list[tuple[float, float, float]]  # (x, y, error bar) points.


def curves(
    panels: dict[str, dict[str, Curve]],
    out: Path,
    *,
    xlabel: str,
    ylabel: str,
    xticks=None,
    log2_x: bool = False,
    reference: dict[str, float] | None = None,
) -> None:
    """One panel per entry of `panels` ({title: {label: points}}), one error-bar curve per label.

    xticks: labels of x = 0, 1, ... (categorical x); log2_x: a base-2 log x axis; reference: {title: y} drawn
    as a dashed "ceiling" line in that panel.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.6), sharey=True, squeeze=False)
    for ax, (title, by_label) in zip(axes[0], panels.items(), strict=True):
        for label, points in by_label.items():
            xs, ys, errors = zip(*points, strict=True) if points else ((), (), ())
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
        if reference and title in reference:
            ax.axhline(reference[title], color="gray", ls="--", lw=1, label="ceiling")
        if xticks is not None:
            ax.set_xticks(range(len(xticks)), xticks)
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8, loc="best")
    _save(fig, out)


def skill_heatmap(labels: list[str], counts: list, title: str, out: Path) -> None:
    """Draws rows of skill counts [R, K] as the fraction of each row's instances choosing each skill vector."""
    grid = np.asarray(counts, np.float64)
    grid /= np.maximum(grid.sum(1, keepdims=True), 1.0)
    fig, ax = plt.subplots(figsize=(1.5 + 0.4 * grid.shape[1], 1.0 + 0.35 * len(labels)))
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("skill vector (codebook index)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    _save(fig, out)


def task_similarity(usage: dict[str, list]) -> tuple[list[str], np.ndarray]:
    """Task names and the cosine similarity [T, T] of their average one-hot skill choices (paper, Figure 3), from
    {task: [K] counts of its instances per skill vector}."""
    names = list(usage)
    rows = np.stack([np.asarray(usage[n], np.float64) for n in names])
    rows /= rows.sum(1, keepdims=True)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return names, unit @ unit.T


def task_relations(usage: dict[str, list], out: Path) -> None:
    """The paper's Figure 3 from {task: [K] skill counts}: `task_similarity`, drawn as a heatmap."""
    names, similarity = task_similarity(usage)
    # At least wide enough for the title.
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 0.5 * len(names)), max(3.0, 1.0 + 0.45 * len(names))))
    image = ax.imshow(similarity, cmap="magma", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("Task relations: cosine similarity of skill choices")
    fig.colorbar(image, ax=ax)
    _save(fig, out)


def scatter(panels: dict[str, dict[str, list]], out: Path, *, xlabel: str, ylabel: str) -> None:
    """One panel per entry of `panels` ({title: {group: [(x, y, label), ...]}}), one marker colour per group and
    each point annotated with its label."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.0), squeeze=False)
    for ax, (title, groups) in zip(axes[0], panels.items(), strict=True):
        for group, points in groups.items():
            if points:
                xs, ys, labels = zip(*points, strict=True)
                ax.scatter(xs, ys, label=group)
                for x, y, label in points:
                    ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8, loc="best")
    _save(fig, out)


def _save(fig, out: storage.Path) -> None:
    fig.tight_layout()
    with storage.replacing(out) as tmp, open(tmp, "wb") as f:  # A file object: the temporary's name is no PNG's.
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)

"""Figures as PNG bytes: the plots that train, eval and the HTML report draw.

matplotlib's object API only (a ``Figure`` of its own, never pyplot's global state or a display),
so that plotting is safe in worker processes and on machines without a screen.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

#: Dots per inch of every PNG (a 9-inch-wide figure is 900 pixels wide).
DPI = 100
#: The figures eval and the report show per robustness level, with their names in legends.
ROBUSTNESS_FIGURES = {"waf": "WAF", "macro_f1": "macro-F1", "accuracy": "accuracy"}


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure of ``width`` x ``height`` inches, drawn by the Agg backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def png(figure: Any) -> bytes:
    """``figure`` laid out tightly and rendered as PNG bytes."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> bytes:
    """The confusion matrix as a PNG: rows true class, columns predicted, counts in the cells."""
    counts = np.asarray(confusion)
    size = 1.5 + 0.7 * len(classes)
    figure = new_figure(size + 1, size)
    axes = figure.subplots()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(classes))
    axes.set_xticks(ticks, labels=classes, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=classes)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    threshold = counts.max() / 2 if counts.size else 0
    for (row, column), count in np.ndenumerate(counts):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black", fontsize="small")
    return png(figure)


@dataclass(frozen=True)
class Curve:
    """One fold's record per epoch (``epoch``, ``train_loss``, ``val_waf``, as train writes it to
    history.json) and the epoch that was kept."""

    label: str
    epochs: list[dict[str, Any]]
    best_epoch: int | None


def curves_png(curves: Sequence[Curve], title: str = "") -> bytes:
    """Training loss and validation WAF per epoch of every curve, the kept epochs dotted."""
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(9, 3.5)
    loss_axes, waf_axes = figure.subplots(1, 2)
    for curve in curves:
        epochs = [r["epoch"] for r in curve.epochs]
        loss_axes.plot(epochs, [r["train_loss"] for r in curve.epochs], label=curve.label)
        waf_axes.plot(epochs, [r["val_waf"] for r in curve.epochs], label=curve.label)
        if curve.best_epoch is not None:
            waf_axes.axvline(curve.best_epoch, linestyle=":", linewidth=0.8)
    for axes in (loss_axes, waf_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.set(title=f"{title}: training loss" if title else "training loss", xlabel="epoch")
    waf_axes.set(title="validation WAF", xlabel="epoch", ylim=(0, 1.05))  # a WAF of 1 stays off the frame
    waf_axes.legend(fontsize="small")
    return png(figure)


def per_class_png(classes: Sequence[str], f1: dict[str, Sequence[float]]) -> bytes:
    """Per-class F1 as grouped bars: one group per class, one bar per run (``f1`` maps a run's
    name to its F1 per class, in the order of ``classes``)."""
    figure = new_figure(max(6.0, 1.1 * len(classes) * max(1, len(f1)) ** 0.5 + 2), 3.5)
    axes = figure.subplots()
    width = 0.8 / max(1, len(f1))
    positions = np.arange(len(classes))
    for k, (run, values) in enumerate(f1.items()):
        axes.bar(positions + (k - (len(f1) - 1) / 2) * width, values, width, label=run)
    axes.set_xticks(positions, labels=classes)
    axes.set(ylabel="F1", ylim=(0, 1), title="F1 per class")
    axes.legend(fontsize="small")
    return png(figure)


def reliability_png(before: Sequence[dict[str, float]], after: Sequence[dict[str, float]],
                    ece_before: float, ece_after: float, title: str) -> bytes:
    """Reliability diagrams before and after temperature scaling, side by side: per confidence bin
    (eval's ``reliability`` bins) the accuracy as a bar and the mean confidence as a mark; a
    calibrated model's bars reach their marks."""
    figure = new_figure(9, 3.8)
    moments = (("before (T = 1)", before, ece_before), ("after temperature scaling", after, ece_after))
    for axes, (name, bins, ece) in zip(figure.subplots(1, 2), moments):
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect calibration")
        axes.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], [b["upper"] - b["lower"] for b in bins],
                 align="edge", edgecolor="black", linewidth=0.5, alpha=0.8, label="accuracy")
        axes.plot([(b["lower"] + b["upper"]) / 2 for b in bins], [b["confidence"] for b in bins], "_", color="darkred",
                  markersize=12, markeredgewidth=2, label="mean confidence")
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
                 title=f"{title}: {name}, ECE {ece:.4f}")
        axes.title.set_fontsize("small")
        axes.legend(fontsize="x-small", loc="upper left")
    return png(figure)


def robustness_png(corruptions: dict[str, dict[str, Any]], title: str) -> bytes:
    """One panel per corruption: WAF, macro-F1 and accuracy at the clean level and at each level
    of the corruption, in the order eval lists them (``{"clean": {...}, "levels": [...]}``)."""
    count = len(corruptions)
    figure = new_figure(min(4.2 * count, 13), 3.4 * ((count + 2) // 3))
    grid = np.atleast_1d(figure.subplots((count + 2) // 3, min(count, 3), squeeze=False)).ravel()
    for axes, (name, curve) in zip(grid, corruptions.items()):
        ticks = ["clean", *(level_label(curve.get("parameter"), level["level"]) for level in curve["levels"])]
        for key, shown in ROBUSTNESS_FIGURES.items():
            axes.plot(range(len(ticks)), [curve["clean"][key], *(level[key] for level in curve["levels"])],
                      marker="o", label=shown)
        axes.set_xticks(range(len(ticks)), labels=ticks, rotation=30, ha="right")
        axes.set(ylim=(0, 1), title=f"{title}: {name}")
        axes.title.set_fontsize("small")
        axes.legend(fontsize="x-small")
    for unused in grid[count:]:
        unused.set_visible(False)
    return png(figure)


def level_label(parameter: str | None, level: Any) -> str:
    """How a corruption level is written on an axis: ``snr=10``, or the level alone."""
    if level is None:
        return "on"
    return f"{parameter}={level}" if parameter else str(level)

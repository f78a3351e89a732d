"""Plots of evaluation reports (matplotlib, headless): per-label F1, F1 against speed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spacy_medllm.evaluation.tables import _column, _label_f1, read_reports


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_label_f1(report: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: strict F1 per label (and micro) for each system; labels with no gold and no
    predicted span in any system are left out."""
    plt = _pyplot()
    systems = report["systems"]
    shown = [
        label
        for label in report["labels"]
        if any(_label_f1(s["strict"]["per_label"][label]) != "n/a" for s in systems)
    ]
    groups = [*shown, "micro"]
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) * max(len(systems), 1) + 2), 4.0))
    for k, system in enumerate(systems):
        strict = system["strict"]
        values = [strict["per_label"][label]["f1"] for label in shown]
        values.append(strict["micro"]["f1"])
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, values, width, label=system["name"])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("strict F1 (seqeval)")
    ax.set_title(f"{report['corpus']} ({report['split']}, n={report['n_docs']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_f1_vs_speed(reports: Iterable[Mapping[str, Any] | str | Path], path: str | Path) -> Path:
    """Strict micro F1 against words/s (log x): one point per system and corpus; the colour is
    the system, the marker the corpus."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    loaded = [r if isinstance(r, Mapping) else read_reports([r])[0] for r in reports]
    corpora = list(dict.fromkeys(_column(r) for r in loaded))
    systems = list(dict.fromkeys(s["name"] for r in loaded for s in r["systems"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>pX*"
    colour = {name: colours[i % len(colours)] for i, name in enumerate(systems)}
    marker = {corpus: markers[i % len(markers)] for i, corpus in enumerate(corpora)}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for report in loaded:
        for system in report["systems"]:
            x, y = system["speed"]["words_per_s"], system["strict"]["micro"]["f1"]
            if not x:
                continue
            ax.scatter([x], [y], color=colour[system["name"]], marker=marker[_column(report)])
            ax.annotate(
                system["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    handles = [Line2D([], [], color=colour[n], marker="o", ls="", label=n) for n in systems]
    handles += [Line2D([], [], color="grey", marker=marker[c], ls="", label=c) for c in corpora]
    ax.set_xscale("log")
    ax.set_xlabel("words per second (log)")
    ax.set_ylabel("strict micro F1 (seqeval)")
    ax.set_ylim(0, 1.05)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Metric writers (JSONL + TensorBoard), sample tables and the end-of-run curves PNG."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "dtype"):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricWriter:
    """Appends one JSON object per call to `workdir/metrics.jsonl` and mirrors scalars to
    TensorBoard event files in `workdir/tensorboard` (when tensorboardX is installed).

    On resume, `truncate_after(step)` drops rows logged after the restored checkpoint so the
    file reads as if the run had never stopped.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a core dependency
                self._tb = None

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, self.path)

    def move_aside(self, suffix: str) -> None:
        """Renames the rows written so far to `metrics.jsonl.<suffix>` (a run started over
        keeps its predecessor's rows)."""
        if self.enabled and os.path.exists(self.path):
            os.replace(self.path, f"{self.path}.{suffix}")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a run killed mid-write) is ignored."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_samples(path: str, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Appends completion records ({prompt, completion, reward, ...}) tagged with `step`."""
    with open(path, "a") as f:
        for row in rows:
            f.write(
                json.dumps({"step": int(step), **{k: _plain(v) for k, v in row.items()}}) + "\n"
            )


def plot_curves(metrics_path: str, out_path: str, panels: Sequence[tuple[str, Sequence[str]]]):
    """One PNG with a panel per (title, metric keys) from metrics.jsonl; keys absent are skipped.

    A key ending in `*` stands for every metric with that prefix (e.g.
    `eval/accuracy/difficulty_*`), ordered by a trailing number when there is one. Panels with no
    data at all are left out.
    """
    rows = read_jsonl(metrics_path)
    names = sorted({k for r in rows for k in r})
    lines = [
        (
            title,
            [
                (key, [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))])
                for key in _expand_keys(keys, names)
            ],
        )
        for title, keys in panels
    ]
    plot_lines([(t, ls) for t, ls in lines if any(p for _, p in ls)], out_path)


def plot_lines(
    panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[tuple[float, float]]]]]],
    out_path: str,
    xlabel: str = "step",
) -> None:
    """One PNG with a panel per (title, [(label, [(x, y), ...]), ...]); lines without points
    are skipped; no panels at all draws one empty "no metrics" panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(panels) or [("no metrics", ())]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (title, lines) in zip(axes, panels):
        for label, points in lines:
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label, marker="." if len(points) < 40 else None)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _expand_keys(keys: Sequence[str], names: Sequence[str]) -> list[str]:
    """Keys with `prefix*` patterns replaced by the matching metric names."""

    def order(name: str):
        tail = name.rstrip("0123456789")
        return (tail, int(name[len(tail) :]) if len(tail) < len(name) else -1)

    out = []
    for key in keys:
        if key.endswith("*"):
            out += sorted((n for n in names if n.startswith(key[:-1])), key=order)
        else:
            out.append(key)
    return out

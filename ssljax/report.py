"""Results table and plots from training runs: `python -m ssljax.report RUN_DIR...`.

Reads each run's `config.json`, `metrics.jsonl` and `eval/*.json` (written by
`python -m ssljax.eval`) and writes a Markdown file with one row per run, the baselines
(random init per run, raw pixels per dataset) and PNG plots beside it:

    python -m ssljax.report runs/byol runs/simclr --out=docs/results.md

Plots: loss and learning rate vs step (a panel per run), online-probe top-1 vs step,
k-NN top-1 vs step (from `eval/knn.json` and `eval/knn_step_*.json`, with the baselines as
horizontal lines) and images/s vs step.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

from ssljax import files


@dataclasses.dataclass
class RunRecord:
    """What the report knows about one run directory."""

    path: Path
    name: str
    config: dict
    rows: list[dict]
    evals: dict[str, dict]  # eval file stem -> its JSON

    @property
    def method(self) -> str:
        return self.config.get("method", "?")

    @property
    def dataset(self) -> str:
        return self.config.get("dataset", {}).get("name", "?")

    @property
    def last_step(self) -> int | None:
        return self.rows[-1]["step"] if self.rows else None

    @property
    def wall_seconds(self) -> float | None:
        """Logged training time summed over invocations (`elapsed_sec` restarts on resume)."""
        total, previous = 0.0, 0.0
        for row in self.rows:
            elapsed = row.get("elapsed_sec", 0.0)
            if elapsed < previous:
                total += previous
            previous = elapsed
        return total + previous if self.rows else None

    @property
    def images_per_sec(self) -> float | None:
        """Median img/s over log intervals, without the first (it includes compilation)."""
        rates = [r["images_per_sec"] for r in self.rows[1:] if "images_per_sec" in r]
        return statistics.median(rates) if rates else None

    @property
    def stopped_by_time_limit(self) -> bool:
        return bool(self.rows and self.rows[-1].get("stopped_by_time_limit"))

    def knn_curve(self) -> list[tuple[int, float]]:
        """(checkpoint step, 20-NN top-1) of every k-NN evaluation of a trained checkpoint."""
        points = {}
        for stem, result in self.evals.items():
            if re.fullmatch(r"knn(_step_\d+)?", stem) and result.get("checkpoint") is not None:
                points[int(result["checkpoint"])] = result["top1"]
        return sorted(points.items())


def load_run(path: str | Path) -> RunRecord:
    path = Path(path)
    if not path.is_dir():
        raise SystemExit(f"error: {path} is not a directory")
    config_path, metrics_path = path / "config.json", path / "metrics.jsonl"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    rows = []
    if metrics_path.exists():
        rows = files.read_jsonl(metrics_path)
    evals = {}
    for file in sorted((path / "eval").glob("*.json")):
        try:
            evals[file.stem] = json.loads(file.read_text())
        except json.JSONDecodeError:
            print(f"warning: skipping unreadable {file}", file=sys.stderr)
    if not (config or rows or evals):
        raise SystemExit(f"error: {path} has no config.json, metrics.jsonl or eval/*.json")
    return RunRecord(path, path.name, config, rows, evals)


def _pct(result: dict | None, key: str = "top1") -> str:
    if not result or result.get(key) is None:
        return ""
    return f"{100 * result[key]:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def _table(header: list[str], rows: list[dict[str, str]]) -> list[str]:
    """A Markdown table of `rows` (column name -> cell), without the columns empty in all."""
    keep = [c for c in header if any(row.get(c) for row in rows)]
    lines = ["| " + " | ".join(keep) + " |"]
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(keep))) + "|")
    lines += ["| " + " | ".join(row.get(c, "") for c in keep) + " |" for row in rows]
    return lines


RESULT_HEADER = [
    "run",
    "method",
    "steps",
    "wall time",
    "img/s",
    "online top-1",
    "20-NN",
    "200-NN",
    "linear top-1",
    "linear top-5",
    "semi 1%",
    "semi 10%",
    "random-init 20-NN",
    "random-init linear",
]


def result_rows(runs: list[RunRecord]) -> list[dict[str, str]]:
    rows = []
    for run in runs:
        e = run.evals
        online = run.rows[-1].get("online_top1") if run.rows else None
        steps = "" if run.last_step is None else str(run.last_step)
        if run.stopped_by_time_limit:
            steps += " (time limit)"
        rows.append(
            {
                "run": run.name,
                "method": run.method,
                "steps": steps,
                "wall time": _duration(run.wall_seconds),
                "img/s": f"{run.images_per_sec:.0f}" if run.images_per_sec else "",
                "online top-1": _pct({"top1": online}),
                "20-NN": _pct(e.get("knn"), "top1_k20"),
                "200-NN": _pct(e.get("knn"), "top1_k200"),
                "linear top-1": _pct(e.get("linear")),
                "linear top-5": _pct(e.get("linear"), "top5"),
                "semi 1%": _pct(e.get("semi_1pct")),
                "semi 10%": _pct(e.get("semi_10pct")),
                "random-init 20-NN": _pct(e.get("knn_random_init"), "top1_k20"),
                "random-init linear": _pct(e.get("linear_random_init")),
            }
        )
    return rows


def baseline_rows(runs: list[RunRecord]) -> list[dict[str, str]]:
    """One raw-pixel row per dataset (from the first run that has the evaluation)."""
    rows, seen = [], set()
    for run in runs:
        knn, lin = run.evals.get("knn_raw_pixels"), run.evals.get("linear_raw_pixels")
        if (knn or lin) and run.dataset not in seen:
            seen.add(run.dataset)
            rows.append(
                {
                    "run": f"raw pixels ({run.dataset})",
                    "method": "—",
                    "20-NN": _pct(knn, "top1_k20"),
                    "200-NN": _pct(knn, "top1_k200"),
                    "linear top-1": _pct(lin),
                    "linear top-5": _pct(lin, "top5"),
                }
            )
    return rows


def verdict(runs: list[RunRecord]) -> list[str]:
    """Plain sentences: which runs beat their random init, and the best vs raw pixels."""
    lines = []
    scored = [r for r in runs if "knn" in r.evals]
    compared = [r for r in scored if "knn_random_init" in r.evals]
    losers = [
        r.name for r in compared if r.evals["knn"]["top1"] <= r.evals["knn_random_init"]["top1"]
    ]
    if compared:
        tail = f" (not: {', '.join(losers)})." if losers else "."
        lines.append(
            f"{len(compared) - len(losers)} of {len(compared)} runs beat their random-init "
            f"network in 20-NN top-1{tail}"
        )
    raw = next((r.evals["knn_raw_pixels"] for r in runs if "knn_raw_pixels" in r.evals), None)
    if scored and raw:
        best = max(scored, key=lambda r: r.evals["knn"]["top1"])
        top, pixels = best.evals["knn"]["top1"], raw["top1"]
        relation = "beats" if top > pixels else "does not beat"
        lines.append(
            f"The best 20-NN top-1, {best.name} ({100 * top:.2f}%), {relation} raw "
            f"pixels ({100 * pixels:.2f}%)."
        )
    return lines


def _series(run: RunRecord, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in run.rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def make_plots(runs: list[RunRecord], directory: Path, prefix: str) -> list[tuple[str, Path]]:
    """Write the PNGs; returns (title, path) of each written plot.

    Figures are built without pyplot, so a notebook's matplotlib backend is left alone.
    """
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, stem, title):
        path = directory / f"{prefix}{stem}.png"
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=100, format="png")
        files.write_bytes(path, buffer.getvalue())
        written.append((title, path))

    trained = [r for r in runs if r.rows]
    if trained:
        cols = min(3, len(trained))
        nrows = math.ceil(len(trained) / cols)
        fig = Figure(figsize=(4.2 * cols, 3.0 * nrows))
        axes = fig.subplots(nrows, cols, squeeze=False)
        for ax, run in zip(axes.flat, trained):
            ax.plot(*_series(run, "loss"), color="tab:blue")
            ax.set_title(f"{run.name} ({run.method})", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("loss", color="tab:blue")
            lr_axis = ax.twinx()
            lr_axis.plot(*_series(run, "lr"), color="tab:orange", linestyle="--")
            lr_axis.set_ylabel("learning rate", color="tab:orange")
        for ax in list(axes.flat)[len(trained) :]:
            ax.axis("off")
        save(fig, "loss_lr", "Loss (solid) and learning rate (dashed) vs step")

    def overlay(key, stem, title, ylabel, scale=1.0):
        with_key = [r for r in trained if _series(r, key)[0]]
        if not with_key:
            return
        fig = Figure(figsize=(6.5, 4.0))
        ax = fig.subplots()
        for run in with_key:
            steps, values = _series(run, key)
            ax.plot(steps, [scale * v for v in values], label=run.name)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, stem, title)

    overlay(
        "online_top1",
        "online_probe",
        "Online linear probe top-1 (training batches)",
        "top-1 (%)",
        100.0,
    )

    curves = [(r, r.knn_curve()) for r in runs if r.knn_curve()]
    if curves:
        fig = Figure(figsize=(6.5, 4.0))
        ax = fig.subplots()
        for run, points in curves:
            line = ax.plot(
                [p[0] for p in points], [100 * p[1] for p in points], marker="o", label=run.name
            )[0]
            if "knn_random_init" in run.evals:
                ax.axhline(
                    100 * run.evals["knn_random_init"]["top1"],
                    color=line.get_color(),
                    linestyle=":",
                    linewidth=1,
                )
        raw = next((r.evals["knn_raw_pixels"] for r in runs if "knn_raw_pixels" in r.evals), None)
        if raw:
            ax.axhline(100 * raw["top1"], color="black", linestyle="--", label="raw pixels")
        ax.set_xlabel("checkpoint step")
        ax.set_ylabel("20-NN top-1 (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "knn", "20-NN top-1 vs step (dotted: each run's random init)")

    overlay("images_per_sec", "throughput", "Training throughput", "images/s")
    return written


def render(runs: list[RunRecord], out: Path, images: Path, notes: list[str]) -> str:
    """The Markdown text; also writes the plots into `images`."""
    prefix = ""
    plots = make_plots(runs, images, prefix)
    lines = ["# Results", ""]
    datasets = sorted({r.dataset for r in runs})
    lines.append(
        f"Runs: {len(runs)} on {', '.join(datasets)}. Accuracies are top-1 (%) on the "
        "test split; k-NN is weighted (cosine, T = 0.07) over the labelled train split; "
        "the linear probe follows the protocol recorded in each run's "
        "`eval/linear.json`."
    )
    lines.append("")
    lines += _table(RESULT_HEADER, result_rows(runs) + baseline_rows(runs))
    lines.append("")
    lines += verdict(runs)
    lines.append("")
    for note in notes:
        lines += [note, ""]
    for title, path in plots:
        rel = Path(os.path.relpath(path.resolve(), out.parent.resolve())).as_posix()
        lines += [f"**{title}**", "", f"![{title}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ssljax.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="training --workdir directories")
    parser.add_argument("--out", default="results.md", help="the Markdown file to write")
    parser.add_argument(
        "--images",
        default=None,
        help="where the PNGs go (default: images/<out name>/ beside --out)",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a paragraph to add under the table (repeatable): the command, the machine",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    images = Path(args.images) if args.images else out.parent / "images" / out.stem
    runs = [load_run(p) for p in args.runs]
    text = render(runs, out, images, args.note)
    files.write_text(out, text)
    print(text)
    print(f"wrote {out} and plots in {images}", file=sys.stderr)


if __name__ == "__main__":
    main()

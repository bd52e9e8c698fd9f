"""`rspo report RUN_DIR` and `rspo compare RUN...`: plots and markdown from what a run left on disk.

Inputs: RUN_DIR/metrics.jsonl (one learner step record per line, see `LearnerWorker._record`) and
RUN_DIR/summary.json (written by `rspo train`; `eval_before`/`eval_after` hold held-out `pass_at_k`
and `max_at_k` dicts keyed by k). Either may be missing; the report says what it could not plot.
Outputs under RUN_DIR/report/: PNG plots (matplotlib, Agg backend, no display needed) and report.md.
This module reads files only: it never touches Redis, gRPC or a model.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(path: Path) -> dict[str, Any]:
    """summary.json of a run dir, or a JSON file: a summary, or one `rspo eval` result (as 'after')."""
    target = path / "summary.json" if path.is_dir() else path
    if not target.is_file():
        return {}
    data: dict[str, Any] = json.loads(target.read_text())
    if "eval_after" not in data and "pass_at_k" in data:
        data = {"eval_after": data, "label": path.stem}
    return data


def _ks(d: dict[str, Any] | None) -> list[int]:
    return sorted(int(k) for k in (d or {}))


def _series(records: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pts = [(float(r[x]), float(r[key])) for r in records if key in r and x in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


@dataclass
class Report:
    run_dir: Path
    out_dir: Path
    plots: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, report: Report, name: str) -> None:
    fig.tight_layout()
    fig.savefig(report.out_dir / name, dpi=100)
    _plt().close(fig)
    report.plots.append(name)


def plot_train_curves(records: list[dict[str, Any]], summary: dict[str, Any], k: Any, report: Report) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("max_at_k", f"Max@{k} (train groups)"), ("pass_at_k", f"Pass@{k} (train groups)")):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, marker=".", label=label)
    last = float(records[-1]["step"]) if records else 0.0
    for which, step, marker in (("before", 0.0, "o"), ("after", last, "s")):
        ev = summary.get(f"eval_{which}") or {}
        for name in ("pass_at_k", "max_at_k"):
            value = (ev.get(name) or {}).get(str(k))
            if value is not None:
                ax.scatter([step], [value], marker=marker, zorder=3, label=f"held-out {name.split('_')[0]}@{k} {which}")
    ax.set_xlabel("learner step")
    ax.set_ylabel("estimate")
    ax.set_title("Max@k and Pass@k vs step")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, report, "passk_maxk_vs_step.png")


def plot_k_curve(summary: dict[str, Any], report: Report) -> None:
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("pass_at_k", "max_at_k")):
        for ev, label, style in ((before, "before", "--o"), (after, "after", "-s")):
            d = ev.get(name) or {}
            ks = _ks(d)
            if ks:
                ax.plot(ks, [d[str(k)] for k in ks], style, label=f"{label} training")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel(name.replace("_at_", "@").replace("_", " "))
        ax.set_title(f"held-out {name.replace('_at_k', '@k')} vs k")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, report, "passk_vs_k.png")


def plot_rewards(records: list[dict[str, Any]], report: Report) -> None:
    """Distribution of the per-step mean training reward, first vs last third of the run."""
    _, rewards = _series(records, "reward_mean")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    third = max(1, len(rewards) // 3)
    lo, hi = min(rewards), max(rewards)
    bins = 20 if hi > lo else 1
    rng = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
    ax.hist(rewards[:third], bins=bins, range=rng, alpha=0.6, label=f"first {third} steps")
    ax.hist(rewards[-third:], bins=bins, range=rng, alpha=0.6, label=f"last {third} steps")
    ax.set_xlabel("mean reward of the step's training samples")
    ax.set_ylabel("steps")
    ax.set_title("Reward distribution (training batches)")
    ax.legend(fontsize=8)
    _save(fig, report, "reward_distribution.png")


def plot_throughput_staleness(records: list[dict[str, Any]], report: Report) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    xs, gps = _series(records, "groups_per_s", "time_s")
    ax1.plot(xs, gps, marker=".", color="tab:green")
    ax1.set_ylabel("groups / s")
    ax1.set_title("Throughput and staleness over time")
    ax1.grid(alpha=0.3)
    for key, style in (("staleness_mean", "-"), ("staleness_max", ":")):
        sx, sy = _series(records, key, "time_s")
        ax2.plot(sx, sy, style, marker=".", label=key.replace("_", " "))
    ax2.set_xlabel("seconds since learner start")
    ax2.set_ylabel("policy versions")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    _save(fig, report, "throughput_staleness.png")


def plot_optimization(records: list[dict[str, Any]], report: Report) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss/loss", "grad_norm", "loss/adv_std"):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, label=key)
    ax.set_xlabel("learner step")
    ax.set_title("Loss, gradient norm, advantage std")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, report, "optimization.png")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _markdown(report: Report, records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    k = summary.get("k") or "k"
    lines = [f"# rspo run report: {summary.get('run_id', report.run_dir.name)}", ""]
    rows = [
        ("method", summary.get("method")),
        ("task", summary.get("task")),
        ("k / n", f"{summary.get('k')} / {summary.get('n')}" if summary else None),
        ("steps", summary.get("steps", records[-1]["step"] if records else None)),
        ("groups applied / dropped", f"{summary.get('groups_applied')} / {summary.get('groups_dropped')}"),
        (
            f"held-out Pass@{k} before -> after",
            f"{_fmt(summary.get('pass_at_k_before'))} -> {_fmt(summary.get('pass_at_k_after'))}",
        ),
        (
            f"held-out Max@{k} before -> after",
            f"{_fmt(summary.get('max_at_k_before'))} -> {_fmt(summary.get('max_at_k_after'))}",
        ),
        ("wall seconds", summary.get("wall_s")),
    ]
    if records:
        last = records[-1]
        rows += [
            ("mean groups/s", _fmt(sum(r.get("groups_per_s", 0.0) for r in records) / len(records))),
            ("max staleness", max(r.get("staleness_max", 0) for r in records)),
            ("last train Max@k / Pass@k", f"{_fmt(last.get('max_at_k'))} / {_fmt(last.get('pass_at_k'))}"),
            ("learner busy ratio (last)", _fmt(last.get("learner_busy_ratio"))),
        ]
    lines += ["| | |", "|---|---|", *(f"| {a} | {_fmt(b)} |" for a, b in rows), ""]
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    ks = sorted(set(_ks(before.get("pass_at_k"))) | set(_ks(after.get("pass_at_k"))))
    if ks:
        lines += [
            "## Held-out Pass@k and Max@k by k",
            "",
            "| k | Pass@k before | Pass@k after | Max@k before | Max@k after |",
        ]
        lines.append("|---|---|---|---|---|")
        for kk in ks:
            vals = [(ev.get(m) or {}).get(str(kk)) for m in ("pass_at_k", "max_at_k") for ev in (before, after)]
            lines.append(f"| {kk} | " + " | ".join(_fmt(v) for v in vals) + " |")
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report.plots]
    if report.skipped:
        lines += ["", "## Not plotted", ""] + [f"- {s}" for s in report.skipped]
    return "\n".join(lines) + "\n"


def build_report(run_dir: Path) -> Report:
    """Write RUN_DIR/report/*.png and report.md; returns what was written."""
    report = Report(run_dir, run_dir / "report")
    report.out_dir.mkdir(parents=True, exist_ok=True)
    records = read_jsonl(run_dir / "metrics.jsonl")
    summary = read_summary(run_dir)
    k = summary.get("k") or (records[0].get("k") if records else None) or "k"
    if records:
        plot_train_curves(records, summary, k, report)
        plot_rewards(records, report)
        plot_throughput_staleness(records, report)
        plot_optimization(records, report)
    else:
        report.skipped.append("step curves, rewards, throughput: no metrics.jsonl records")
    if (summary.get("eval_before") or {}).get("pass_at_k") or (summary.get("eval_after") or {}).get("pass_at_k"):
        plot_k_curve(summary, report)
    else:
        report.skipped.append("Pass@k vs k: no eval_before/eval_after in summary.json")
    (report.out_dir / "report.md").write_text(_markdown(report, records, summary))
    return report


def compare_table(paths: Sequence[Path]) -> str:
    """One markdown table of several runs (or `rspo eval` JSON results), plus held-out Pass@k by k."""
    rows = []
    all_ks: set[int] = set()
    for path in paths:
        s = read_summary(path)
        before, after = s.get("eval_before") or {}, s.get("eval_after") or {}
        k = str(s.get("k") or (max(_ks(after.get("pass_at_k")), default=0) or ""))
        all_ks |= set(_ks(after.get("pass_at_k")))
        rows.append(
            {
                "run": s.get("label") or path.name,
                "method": s.get("method", "-"),
                "k": k,
                "pass_before": (before.get("pass_at_k") or {}).get(k),
                "pass_after": (after.get("pass_at_k") or {}).get(k),
                "max_before": (before.get("max_at_k") or {}).get(k),
                "max_after": (after.get("max_at_k") or {}).get(k),
                "wall_s": s.get("wall_s"),
                "after": after,
            }
        )
    head = "| run | method | k | Pass@k before | Pass@k after | Max@k before | Max@k after | wall s |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["run"], r["method"], r["k"], r["pass_before"], r["pass_after"], r["max_before"], r["max_after"]]
        lines.append("| " + " | ".join(_fmt(c) for c in [*cells, r["wall_s"]]) + " |")
    ks = sorted(all_ks)
    if ks:
        lines += ["", "Held-out Pass@k after training, by k:", ""]
        lines.append("| run | " + " | ".join(f"Pass@{k}" for k in ks) + " |")
        lines.append("|---|" + "---|" * len(ks))
        for r in rows:
            vals = [(r["after"].get("pass_at_k") or {}).get(str(k)) for k in ks]
            lines.append(f"| {r['run']} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"


def run_report_command(args: argparse.Namespace) -> int:
    if args.command == "report":
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            print(f"rspo: error: {run_dir} is not a directory (pass a run directory of `rspo train`)")
            return 2
        report = build_report(run_dir)
        print(f"wrote {report.out_dir / 'report.md'} and {len(report.plots)} plots")
        for s in report.skipped:
            print(f"skipped: {s}")
        return 0
    table = compare_table(args.run_dirs)
    print(table, end="")
    if args.out is not None:
        Path(args.out).write_text(table)
    return 0

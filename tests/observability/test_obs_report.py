"""`rspo report` and `rspo compare` on a recorded run directory.

tests/observability/data/run_small/ holds metrics.jsonl and summary.json of a real short
`rspo train` run (tiny model, max_digit, k=4; see data/README.md for the command). The PNGs must be
real images of that data: they open, have the expected size, are not blank, and change when the
data changes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.cli import main
from services.report import build_report, compare_table

DATA = Path(__file__).parent / "data" / "run_small"
PLOTS = (
    "passk_maxk_vs_step.png",
    "passk_vs_k.png",
    "reward_distribution.png",
    "throughput_staleness.png",
    "optimization.png",
)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    target = tmp_path / "run_small"
    shutil.copytree(DATA, target)
    return target


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_report_writes_real_plots_and_markdown(run_dir: Path) -> None:
    assert main(["report", str(run_dir)]) == 0
    out = run_dir / "report"
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in PLOTS:
        img = Image.open(out / name)
        img.verify()  # a complete, valid PNG
        px = _pixels(out / name)
        assert px.shape[0] >= 300 and px.shape[1] >= 500, (name, px.shape)
        assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20, f"{name} is (nearly) blank"
    md = (out / "report.md").read_text()
    assert all(f"]({name})" in md for name in PLOTS)
    k = str(summary["k"])
    assert f"{summary['eval_after']['pass_at_k'][k]:.4f}" in md
    assert f"| {summary['method']} |" in md
    assert "Not plotted" not in md


def test_plots_follow_the_data(run_dir: Path) -> None:
    """Same layout, different numbers: the curves must move (the images are plots of the data)."""
    build_report(run_dir)
    before = {name: _pixels(run_dir / "report" / name) for name in ("passk_maxk_vs_step.png", "passk_vs_k.png")}
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    changed = []
    for line in lines:
        rec = json.loads(line)
        rec["max_at_k"] = 1.0 - rec["max_at_k"]
        changed.append(json.dumps(rec))
    (run_dir / "metrics.jsonl").write_text("\n".join(changed) + "\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["eval_after"]["pass_at_k"] = {k: 1.0 - v for k, v in summary["eval_after"]["pass_at_k"].items()}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    build_report(run_dir)
    for name, old in before.items():
        new = _pixels(run_dir / "report" / name)
        assert old.shape == new.shape and (old != new).any(axis=2).mean() > 0.001, name


def test_report_on_a_run_without_summary_says_what_is_missing(run_dir: Path) -> None:
    (run_dir / "summary.json").unlink()
    report = build_report(run_dir)
    assert "passk_vs_k.png" not in report.plots and "passk_maxk_vs_step.png" in report.plots
    assert "Pass@k vs k" in (run_dir / "report" / "report.md").read_text()


def test_compare_puts_runs_side_by_side(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "run_grpo"
    shutil.copytree(run_dir, other)
    summary = json.loads((other / "summary.json").read_text())
    summary["method"] = "grpo"
    (other / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "compare.md"
    assert main(["compare", str(run_dir), str(other), "--out", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| run_")]
    assert len(rows) == 4  # two runs in the main table, two in the per-k table
    assert "| run_small | rspo |" in table and "| run_grpo | grpo |" in table
    assert compare_table([run_dir]).count("Pass@") >= 3

"""Live progress of `rspo train` (rich): step, reward, Max@k/Pass@k, groups/s, staleness."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.common.config import RspoConfig


class ProgressView:
    """A live table when stdout is a terminal; one plain line per step otherwise (CI logs)."""

    def __init__(self, cfg: RspoConfig, enabled: bool = True) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.console = Console(stderr=False)
        self.live: Live | None = None
        self._printed_step = -1

    def __enter__(self) -> ProgressView:
        if self.enabled and sys.stdout.isatty():
            self.live = Live(console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, status: Any, metrics: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        last = metrics[-1] if metrics else {}
        if self.live is not None:
            self.live.update(self._table(status, last))
        elif last and last.get("step", -1) != self._printed_step:
            self._printed_step = int(last["step"])
            print(self._line(status, last), flush=True)

    def _line(self, status: Any, m: dict[str, Any]) -> str:
        return (
            f"step {m.get('step', 0)}/{status.total_steps} reward {m.get('reward_mean', 0):.3f} "
            f"max@{self.cfg.task.k} {m.get('max_at_k', 0):.3f} groups/s {m.get('groups_per_s', 0):.2f} "
            f"staleness {m.get('staleness_mean', 0):.2f} (max {m.get('staleness_max', 0)}) "
            f"dropped {status.groups_dropped} loss {m.get('loss/loss', 0):.4f}"
        )

    def _table(self, status: Any, m: dict[str, Any]) -> Table:
        table = Table(title=f"rspo train: {self.cfg.run.run_id} ({self.cfg.learner.method}, k={self.cfg.task.k})")
        for col in (
            "step",
            "reward",
            f"Max@{self.cfg.task.k} (train)",
            "groups/s",
            "staleness",
            "applied",
            "dropped",
        ):
            table.add_column(col)
        table.add_row(
            f"{m.get('step', 0)}/{status.total_steps}",
            f"{m.get('reward_mean', 0):.3f}",
            f"{m.get('max_at_k', 0):.3f}",
            f"{m.get('groups_per_s', 0):.2f}",
            f"{m.get('staleness_mean', 0):.2f} (max {m.get('staleness_max', 0)})",
            str(status.groups_applied),
            str(status.groups_dropped),
        )
        return table

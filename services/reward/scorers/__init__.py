"""Reward scorers: a registry keyed by kind (`SCORERS`) and the weighted `CombinedScorer`.

Importing this package registers every built-in kind: task, exact, regex, math, code,
python, remote. `build_scorer(spec)` makes one scorer from a `ScorerSpec`.
"""

from services.reward.scorers import code, math, python, remote, simple  # noqa: F401  (registration)
from services.reward.scorers.base import (
    SCORERS,
    Scorer,
    ScoreRequest,
    ScoreResult,
    Status,
    build_scorer,
    register,
)
from services.reward.scorers.combine import CombinedScorer

__all__ = [
    "SCORERS",
    "CombinedScorer",
    "ScoreRequest",
    "ScoreResult",
    "Scorer",
    "Status",
    "build_scorer",
    "register",
]

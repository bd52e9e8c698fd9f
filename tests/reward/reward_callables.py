"""Callables for the `python` scorer tests (imported by "module:function")."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def length_reward(prompt: str, reference: dict[str, Any], response: str) -> float:
    return float(len(response))


async def async_reward(prompt: str, reference: dict[str, Any], response: str) -> float:
    await asyncio.sleep(0)
    return 0.25


def slow_reward(prompt: str, reference: dict[str, Any], response: str) -> float:
    time.sleep(0.5)
    return 1.0


def broken_reward(prompt: str, reference: dict[str, Any], response: str) -> float:
    raise RuntimeError("grader crashed")


def nan_reward(prompt: str, reference: dict[str, Any], response: str) -> float:
    return float("nan")


def group_reward(prompt: str, reference: dict[str, Any], responses: list[str]) -> list[float]:
    return [float(i) for i in range(len(responses))]

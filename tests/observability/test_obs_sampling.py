"""Sampling decisions are read from the W3C traceparent flags without building context objects."""

from __future__ import annotations

import pytest

from services.common.telemetry import is_sampled


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", False),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03", True),
        (None, False),
        ("", False),
        ("garbage", False),
        ("00-abc-def-zz", False),
    ],
)
def test_is_sampled(traceparent: str | None, expected: bool) -> None:
    assert is_sampled(traceparent) is expected

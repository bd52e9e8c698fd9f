"""Code execution reward: run each response against the reference's tests in the sandbox.

reference_json: {"tests": [...]} with assert statements or {"input", "output"} cases
(see `services.reward.sandbox`). Reward = fraction of tests passed (`mode: graded`,
for Max@k) or 1/0 for all-pass (`mode: binary`, for Pass@k). Whatever the code does
(loop, crash, exhaust memory) is the response's fault: it scores as a failed run with
the reason in the message, status OK. Only a failure of the sandbox itself is ERROR.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Literal

from pydantic import Field

from services.common.config import ScorerSpec
from services.reward.sandbox import Reason, SandboxLimits, SandboxResult, detect_isolation, run_tests
from services.reward.scorers.base import (
    BaseScorer,
    Options,
    ScoreRequest,
    ScoreResult,
    Status,
    fail_all,
    failed,
    parse_options,
    register,
)

_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)


class CodeOptions(Options):
    mode: Literal["graded", "binary"] = "graded"
    field: str = Field("tests", description="Reference key holding the tests.")
    wall_s: float = Field(10.0, gt=0)
    cpu_s: int = Field(5, ge=1)
    test_timeout_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(512, ge=32)
    max_processes: int = Field(32, ge=1)
    max_output_bytes: int = Field(1 << 20, ge=1024)
    max_file_bytes: int = Field(1 << 20, ge=0)
    max_open_files: int = Field(64, ge=8)
    concurrency: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1)
    python: str | None = Field(None, description="Interpreter for the code; None picks one the sandbox user can run.")

    def limits(self) -> SandboxLimits:
        return SandboxLimits(
            wall_s=self.wall_s,
            cpu_s=self.cpu_s,
            memory_mb=self.memory_mb,
            max_processes=self.max_processes,
            max_output_bytes=self.max_output_bytes,
            max_file_bytes=self.max_file_bytes,
            max_open_files=self.max_open_files,
            test_timeout_s=self.test_timeout_s,
        )


def extract_code(response: str) -> str:
    """The last fenced code block if there is one, else the whole response."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def _valid_tests(tests: object) -> bool:
    if not isinstance(tests, list) or not tests:
        return False
    if all(isinstance(t, str) for t in tests):
        return True
    return all(
        isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str) for t in tests
    )


class CodeScorer(BaseScorer):
    def __init__(self, opts: CodeOptions) -> None:
        self.opts = opts
        self.limits = opts.limits()
        # Bounds concurrent sandboxes (processes, memory) independently of group concurrency.
        self.slots = asyncio.Semaphore(opts.concurrency)

    def _result(self, run: SandboxResult) -> ScoreResult:
        if run.reason is Reason.SANDBOX_ERROR:
            return failed(Status.ERROR, run.detail)
        value = run.fraction if self.opts.mode == "graded" else float(run.passed == run.total)
        message = f"{run.reason.value}: {run.passed}/{run.total} tests passed"
        if run.detail:
            message += f"; {run.detail}"
        return ScoreResult(
            value=value, status=Status.OK, message=message[:500], components={"tests_passed": run.fraction}
        )

    async def _one(self, response: str, tests: list[str] | list[dict[str, str]]) -> ScoreResult:
        async with self.slots:
            isolation = await asyncio.to_thread(detect_isolation, self.opts.python)
            run = await run_tests(extract_code(response), tests, self.limits, isolation)
        return self._result(run)

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        tests = request.reference.get(self.opts.field)
        if not _valid_tests(tests):
            return fail_all(
                len(request.responses),
                Status.INVALID,
                f"reference '{self.opts.field}' must be a non-empty list of assert strings "
                "or of {input, output} objects",
            )
        assert isinstance(tests, list)
        return list(await asyncio.gather(*(self._one(r, tests) for r in request.responses)))


@register("code")
def make_code_scorer(spec: ScorerSpec) -> CodeScorer:
    return CodeScorer(parse_options(CodeOptions, spec))

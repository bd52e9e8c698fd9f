"""A user-supplied Python callable named "module:function".

The callable is `fn(prompt, reference, response) -> float` (or, with
`group: true`, `fn(prompt, reference, responses) -> list[float]`); it may be a
coroutine function. Sync callables run in a worker thread so a slow one does not
stall the event loop; a call that overruns `timeout_s` yields TIMEOUT statuses
(the thread cannot be killed and finishes in the background, which is why
untrusted code belongs in the `code` scorer's sandbox, not here).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from services.common.config import ScorerSpec
from services.common.errors import ConfigError
from services.reward.scorers.base import (
    BaseScorer,
    Options,
    ScoreRequest,
    ScoreResult,
    Status,
    fail_all,
    failed,
    ok,
    parse_options,
    register,
)


class PythonOptions(Options):
    function: str = Field(..., description="'package.module:function'.")
    group: bool = Field(False, description="The callable scores the whole group in one call.")
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("function")
    @classmethod
    def _shape(cls, v: str) -> str:
        module, sep, name = v.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"'{v}' must look like 'package.module:function'")
        return v


def load_callable(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"python scorer: cannot import '{module_name}': {err}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise ConfigError(f"python scorer: '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise ConfigError(f"python scorer: '{path}' is not callable")
    return fn


class PythonScorer(BaseScorer):
    def __init__(self, opts: PythonOptions) -> None:
        self.opts = opts
        self.fn = load_callable(opts.function)
        self.is_async = inspect.iscoroutinefunction(self.fn)

    async def _call(self, *args: Any) -> Any:
        if self.is_async:
            return await asyncio.wait_for(self.fn(*args), self.opts.timeout_s)
        return await asyncio.wait_for(asyncio.to_thread(self.fn, *args), self.opts.timeout_s)

    async def _one(self, request: ScoreRequest, response: str) -> ScoreResult:
        try:
            return ok(float(await self._call(request.prompt, request.reference, response)))
        except (asyncio.TimeoutError, TimeoutError):
            return failed(Status.TIMEOUT, f"{self.opts.function} took over {self.opts.timeout_s}s")
        except Exception as err:
            return failed(Status.ERROR, f"{self.opts.function} raised {type(err).__name__}: {err}")

    async def _group(self, request: ScoreRequest) -> list[ScoreResult]:
        n = len(request.responses)
        try:
            values = await self._call(request.prompt, request.reference, list(request.responses))
        except (asyncio.TimeoutError, TimeoutError):
            return fail_all(n, Status.TIMEOUT, f"{self.opts.function} took over {self.opts.timeout_s}s")
        except Exception as err:
            return fail_all(n, Status.ERROR, f"{self.opts.function} raised {type(err).__name__}: {err}")
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError) as err:
            return fail_all(n, Status.INVALID, f"{self.opts.function} returned non-numbers: {err}")
        if len(floats) != n:
            return fail_all(n, Status.INVALID, f"{self.opts.function} returned {len(floats)} values for {n}")
        return [ok(v) for v in floats]

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        if self.opts.group:
            return await self._group(request)
        return list(await asyncio.gather(*(self._one(request, r) for r in request.responses)))


@register("python")
def make_python_scorer(spec: ScorerSpec) -> PythonScorer:
    return PythonScorer(parse_options(PythonOptions, spec))

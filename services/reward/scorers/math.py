"""Math answer equivalence with sympy: numbers, fractions, simple LaTeX, symbolic expressions.

Pipeline per response: extract the final answer (last `\\boxed{...}`, else the text
after `####`, else after "answer is", else the whole response), turn simple LaTeX
into sympy syntax (`\\frac{a}{b}`, `\\sqrt{x}`, `^`, `\\cdot`, `\\pi`, ...), parse it
safely, then compare: numbers within a relative tolerance, expressions by
`simplify(a - b) == 0`, comma-separated tuples element-wise. Text that does not
parse is compared as normalised strings.

Safety: `parse_expr` evaluates Python, so input is limited to a small character
set, parsed with no builtins and `evaluate=False`, and rejected when it holds a huge
literal or exponent (`9^9^9^9` would otherwise pin a CPU). Each check runs in a
small dedicated thread pool under `timeout_s`; an overrun is a TIMEOUT status (the
thread cannot be killed; the pool's size bounds how many such runaways exist).

Not handled: matrices, intervals, units beyond stripping `\\text{}`, equations other
than a leading `x =`. Install `math-verify` for a broader grammar if needed.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import sympy
from pydantic import Field
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from services.common.config import ScorerSpec
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
from services.reward.scorers.simple import reference_answers

_TRANSFORMS = (*standard_transformations, implicit_multiplication_application, convert_xor)
_FUNCS: dict[str, Any] = {
    "sqrt": sympy.sqrt,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "log": sympy.log,
    "ln": sympy.log,
    "exp": sympy.exp,
    "pi": sympy.pi,
    "e": sympy.E,
    "oo": sympy.oo,
}
# Only what the tokenizer transformations emit; no builtins, so input cannot reach Python.
_GLOBALS: dict[str, Any] = {
    "__builtins__": {},
    "Integer": sympy.Integer,
    "Float": sympy.Float,
    "Rational": sympy.Rational,
    "Symbol": sympy.Symbol,
    "Function": sympy.Function,
    # evaluate=False rewrites operators into these constructors.
    "Add": sympy.Add,
    "Mul": sympy.Mul,
    "Pow": sympy.Pow,
}
_ALLOWED = re.compile(r"^[0-9A-Za-z+\-*/^(). ,]*$")
_MAX_CHARS = 300
_MAX_DIGITS = 40
_MAX_EXPONENT = 1000
_MAX_NODES = 400

_LATEX_SUBS: tuple[tuple[str, str], ...] = (
    (r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$", ""),
    (r"\\(?:d|t)?frac", r"\\frac"),
    (r"\\(?:text|mathrm|mathbf|textbf|operatorname)\{([^{}]*)\}", r"\1"),
    (r"\^\{?\\circ\}?|\\circ|\\%|%|\\degree", ""),
    (r"\\cdot|\\times", "*"),
    (r"\\div", "/"),
    (r"\\infty", "oo"),
    (r"\\(pi|sin|cos|tan|log|ln|exp)", r" \1 "),
)


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The contents of the balanced {...} group opening at `start`, and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i], i + 1
    return None


def extract_answer(response: str) -> str:
    idx = response.rfind("\\boxed")
    if idx >= 0:
        group = _braced(response, idx + len("\\boxed"))
        if group is not None:
            return group[0].strip()
    if "####" in response:
        return response.rsplit("####", 1)[1].strip()
    m = re.search(r"answer is[:\s]*(.+)$", response, flags=re.IGNORECASE | re.DOTALL)
    if m:
        return m.group(1).strip()
    return response.strip()


def _replace_command(text: str, command: str, arity: int, template: str) -> str:
    """Rewrite `\\command{a}{b}` with balanced braces into `template.format(a, b)`."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find(command, i)
        if j < 0:
            return "".join(out) + text[i:]
        args, k = [], j + len(command)
        for _ in range(arity):
            group = _braced(text, k)
            if group is None:
                break
            args.append(group[0])
            k = group[1]
        if len(args) < arity:  # not the form we know; leave it (parsing will reject it)
            out.append(text[i : j + len(command)])
            i = j + len(command)
            continue
        out.append(text[i:j] + template.format(*(_replace_command(a, command, arity, template) for a in args)))
        i = k


def latex_to_text(s: str) -> str:
    s = s.strip().rstrip(".")
    for pattern, repl in _LATEX_SUBS:
        s = re.sub(pattern, repl, s)
    s = _replace_command(s, "\\frac", 2, "(({})/({}))")
    s = _replace_command(s, "\\sqrt", 1, "sqrt({})")
    s = s.replace("{", "(").replace("}", ")")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s.strip()):  # thousands separators, not a tuple
        s = s.replace(",", "")
    return re.sub(r"^\s*[A-Za-z]\s*=\s*", "", s)  # "x = 3" -> "3"


def _huge_exponent(exp: sympy.Basic) -> bool:
    # A constant exponent must be a plain number of bounded size: towers like 9^9^9 are refused
    # because evaluating them numerically would pin a CPU for hours.
    if exp.free_symbols:
        return False
    return not exp.is_Number or abs(float(exp)) > _MAX_EXPONENT  # type: ignore[arg-type]


def _too_big(expr: sympy.Basic) -> bool:
    for nodes, node in enumerate(sympy.preorder_traversal(expr), 1):
        if nodes > _MAX_NODES:
            return True
        if isinstance(node, sympy.Integer) and len(str(abs(int(node)))) > _MAX_DIGITS:
            return True
        if isinstance(node, sympy.Pow) and _huge_exponent(node.exp):
            return True
    return False


def _tuple_parts(s: str) -> list[str]:
    """Split "(a, b)" or "a, b" at top-level commas; "(a)" stays one part."""
    s = s.strip()
    if (
        s.startswith("(")
        and s.endswith(")")
        and _braced(s.replace("(", "{").replace(")", "}"), 0)
        == (
            s[1:-1].replace("(", "{").replace(")", "}"),
            len(s),
        )
    ):
        s = s[1:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


@lru_cache(maxsize=4096)
def parse_math(text: str) -> tuple[sympy.Expr, ...] | None:
    """A tuple of sympy expressions (one per comma-separated part), or None if it does not parse safely."""
    s = latex_to_text(text)
    if not s or len(s) > _MAX_CHARS or not _ALLOWED.match(s) or re.search(r"[A-Za-z)]\s*\.", s):
        return None
    parts: list[sympy.Expr] = []
    for part in _tuple_parts(s):
        try:
            expr = parse_expr(
                part, local_dict=dict(_FUNCS), global_dict=dict(_GLOBALS), transformations=_TRANSFORMS, evaluate=False
            )
        except Exception:  # SyntaxError, TypeError, TokenError...: not a math expression
            return None
        if not isinstance(expr, sympy.Expr) or _too_big(expr):
            return None
        parts.append(expr)
    return tuple(parts)


def _same(a: sympy.Expr, b: sympy.Expr, rel_tol: float) -> bool:
    diff = a - b
    if not diff.free_symbols:
        va, vb = complex(sympy.N(a)), complex(sympy.N(b))
        return abs(va - vb) <= rel_tol * max(1.0, abs(vb))
    return bool(sympy.simplify(diff) == 0)


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", "", latex_to_text(s)).casefold()


def equivalent(response_answer: str, reference_answer: str, rel_tol: float = 1e-6) -> bool:
    """Whether two final answers are mathematically equal (string equality as the fallback)."""
    if _norm_text(response_answer) == _norm_text(reference_answer):
        return True
    got, want = parse_math(response_answer), parse_math(reference_answer)
    if got is None or want is None or len(got) != len(want):
        return False
    try:
        return all(_same(a, b, rel_tol) for a, b in zip(got, want))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):  # e.g. zoo, nan: not equal
        return False


class MathOptions(Options):
    field: str = Field("answer", description="Reference key holding the answer (or a list of accepted ones).")
    timeout_s: float = Field(2.0, gt=0, description="Per-response time limit for parsing + comparison.")
    rel_tol: float = Field(1e-6, ge=0)
    extract: bool = Field(True, description="Take the final answer from the response (\\boxed{}, ####, ...).")
    threads: int = Field(4, ge=1, le=64, description="Threads for comparisons (bounds runaway computations).")


class MathScorer(BaseScorer):
    def __init__(self, opts: MathOptions) -> None:
        self.opts = opts
        self.pool = ThreadPoolExecutor(max_workers=opts.threads, thread_name_prefix="math-verify")

    def _check(self, response: str, answers: list[str]) -> float:
        got = extract_answer(response) if self.opts.extract else response
        return 1.0 if any(equivalent(got, a, self.opts.rel_tol) for a in answers) else 0.0

    async def _one(self, response: str, answers: list[str]) -> ScoreResult:
        loop = asyncio.get_running_loop()
        try:
            value = await asyncio.wait_for(
                loop.run_in_executor(self.pool, self._check, response, answers), self.opts.timeout_s
            )
        except (asyncio.TimeoutError, TimeoutError):
            return failed(Status.TIMEOUT, f"math check took over {self.opts.timeout_s}s")
        except Exception as err:
            return failed(Status.ERROR, f"math check failed: {type(err).__name__}: {err}")
        return ok(value)

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        answers = reference_answers(request.reference, self.opts.field)
        if answers is None:
            return fail_all(len(request.responses), Status.INVALID, f"reference has no '{self.opts.field}'")
        return list(await asyncio.gather(*(self._one(r, answers) for r in request.responses)))

    async def close(self) -> None:
        # Do not wait: a runaway comparison must not block shutdown.
        self.pool.shutdown(wait=False, cancel_futures=True)


@register("math")
def make_math_scorer(spec: ScorerSpec) -> MathScorer:
    return MathScorer(parse_options(MathOptions, spec))

"""A cheap pre-check for answers too large to verify: power towers (`9^{9^{9}}`), huge powers and factorials.

math-verify hands LaTeX to sympy, which evaluates integer powers and factorials eagerly: `9^{9^{9}}` (a number of
~370 million digits), `(10^{10})!` or `99999999999^{99999999}` each ran into the per-sample deadline (5 s). This
module estimates, in microseconds and without building any number, the decimal digits of every numeric power and
factorial in an answer (log-magnitudes only, towers by recursion) and names those above `MAX_DIGITS`. The bound is
far above anything a normal answer holds: `2^{2^{2^{2^{2}}}}` (19,729 digits), `7^{7^{7}}` (~696k digits) and
`100000!` (~456k digits) still go to math-verify, which takes well under a second on them.

`math.compare` applies it after the fast paths (so an answer written exactly like the reference is still correct):
one side too large, the other not -> wrong; both too large -> unparseable. Extraction skips math-verify's parse of a
snippet that holds such a number. Cost: tens of microseconds on a tower, under 10 ms on 20k-character adversarial
inputs (at most `_MAX_SITES` sites, operands up to `_MAX_OPERAND` characters, towers `_MAX_DEPTH` deep).
"""
from __future__ import annotations

import functools
import itertools
import math
import re

from factory.verify.rewards.latex_numeric import numeric_value

MAX_DIGITS = 1e6  # values with more decimal digits are not handed to math-verify
_MAX_SITES = 1000  # at most this many ^ and ! are examined (keeps the check linear and bounded)
_MAX_DEPTH = 8  # nested powers / factorials followed
_MAX_OPERAND = 4000  # longer operands are not estimated
_SITE = re.compile(r"[\^!]")
_CLOSE = {"}": "{", ")": "(", "]": "["}


def _left_operand(s: str, i: int) -> str | None:
    """The operand ending just before index `i`: a number, or a braced/parenthesized group; None for symbols."""
    j = i
    while j > 0 and s[j - 1] == " ":
        j -= 1
    if j == 0:
        return None
    c = s[j - 1]
    if c in _CLOSE:
        depth, k = 0, j - 1
        while k >= 0:
            if s[k] == c:
                depth += 1
            elif s[k] == _CLOSE[c]:
                depth -= 1
                if depth == 0:
                    return s[k:j]
            k -= 1
        return None
    k = j
    while k > 0 and j - k < 8 and s[k - 1] == "!":
        k -= 1  # the operand is itself a factorial: (3!)!, 3!!
    dot = False
    while k > 0 and j - k < 400 and (s[k - 1].isdigit() or (s[k - 1] == "." and not dot)):
        dot = dot or s[k - 1] == "."
        k -= 1
    number = s[k:j].lstrip(".")
    return number if number[:1].isdigit() else (c if c == "e" else None)


def _right_operand(s: str, i: int) -> str | None:
    """The exponent starting at index `i` (after `^`): a braced group or one character."""
    j = i
    while j < len(s) and s[j] == " ":
        j += 1
    if j >= len(s):
        return None
    if s[j] != "{":
        return s[j]
    depth = 0
    for k in range(j, len(s)):
        depth += (s[k] == "{") - (s[k] == "}")
        if depth == 0:
            return s[j:k + 1]
    return None


def _strip(s: str) -> str:
    s = re.sub(r"\\(?:left|right)", "", s).strip()
    for _ in range(4):  # a few layers of {…} or (…) around a number
        if len(s) > 1 and s[0] + s[-1] in ("{}", "()", "[]") and _balanced(s[1:-1]):
            s = s[1:-1].strip()
    return s


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += (c in "{([") - (c in "})]")
        if depth < 0:
            return False
    return depth == 0


@functools.lru_cache(maxsize=4096)
def log10_magnitude(s: str, depth: int = 0) -> float | None:
    """log10 of |value| of a numeric expression with towers and factorials; None if not numeric (or too deep)."""
    if depth > _MAX_DEPTH:
        return math.inf  # a tower this tall is absurd when its base is a number (a symbol base gives None above)
    if len(s) > _MAX_OPERAND:
        return None
    s = _strip(s)
    if not s:
        return None
    if s.endswith("!") and not s.endswith("\\!"):
        n = log10_magnitude(s.rstrip("!"), depth + 1)  # n!! and n!!! are below n!: an upper bound
        if n is None:
            return None
        if n > 15:
            return math.inf
        value = 10 ** n
        return math.lgamma(value + 1) / math.log(10)
    v = numeric_value(s)
    if v is not None:
        return math.log10(abs(v)) if v != 0 else -math.inf
    hat = _top_level_hat(s)
    if hat is None:
        return None
    base, exponent = log10_magnitude(s[:hat], depth + 1), log10_magnitude(s[hat + 1:], depth + 1)
    if base is None or exponent is None:
        return None
    if exponent > 300:
        return math.inf if base > 0 else None
    return (10 ** exponent) * base


def _top_level_hat(s: str) -> int | None:
    """Index of the `^` of `base^{exponent}` when it spans the whole of `s`."""
    depth = 0
    for k, c in enumerate(s):
        depth += (c in "{([") - (c in "})]")
        if c == "^" and depth == 0:
            right = _right_operand(s, k + 1)
            return k if right is not None and s[k + 1:].strip() == right else None
    return None


def _digits_of_power(s: str, i: int) -> float | None:
    base, exponent = _left_operand(s, i), _right_operand(s, i + 1)
    if base is None or exponent is None:
        return None
    small = exponent.strip("{} ")
    if small.isdigit() and len(small) <= 3 and len(base) < 300:
        return None  # x^{≤999} of a number under 300 digits: under 300k digits, the common case, decided at once
    lb, le = log10_magnitude(base), log10_magnitude(exponent)
    if lb is None or le is None or lb == 0 or math.isinf(lb):
        return None  # a symbol, or a base of 1 or 0
    return math.inf if le > 300 else (10 ** le) * abs(lb)  # 0.5^{10^{10}} is as costly as 2^{10^{10}}


def _digits_of_factorial(s: str, i: int) -> float | None:
    operand = _left_operand(s, i)
    if operand is None:
        return None
    return log10_magnitude(operand + "!")


def too_large(s: str) -> str | None:
    """Why `s` holds a value too large to verify (a power or factorial of more than MAX_DIGITS digits), or None."""
    if "^" not in s and "!" not in s:
        return None
    sites = [m.start() for m in itertools.islice(_SITE.finditer(s), _MAX_SITES)]
    covered = -1  # the sites inside an exponent already estimated (with the power it belongs to) are skipped
    for k in sites:
        if k < covered:
            continue
        if s[k] == "^":
            digits = _digits_of_power(s, k)
            exponent = _right_operand(s, k + 1)
            covered = k + 1 + len(exponent) if exponent else covered
            what = "a power"
        elif k > 0 and s[k - 1] == "\\" or s[k + 1:k + 2] == "=":
            continue  # \! is a LaTeX negative space, != a relation
        else:
            digits = _digits_of_factorial(s, k)
            what = "a factorial"
        if digits is not None and digits > MAX_DIGITS:
            size = "infinitely many" if math.isinf(digits) else f"~10^{math.log10(digits):.0f}"
            return f"{what} with {size} digits"
    return None

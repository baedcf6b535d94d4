"""Prove two answers different cheaply: evaluate simple LaTeX (`3\\sqrt{2}`, `\\frac{\\pi}{6}`, `x^2-1`), or give up.

Why hand-written: math-verify's LaTeX parser (ANTLR) costs milliseconds per new expression, and most wrong answers
are numbers of the same kind as the reference. This recursive-descent evaluator handles only numbers, + - * / ^,
parentheses/braces, \\frac, \\sqrt, \\pi, \\cdot, \\times and \\left/\\right, in microseconds. It returns None for
anything else (letters, %, degrees, units, sets, intervals, mixed numbers like `4\\frac{2}{3}` whose meaning
math-verify decides), so the caller falls back to math-verify. It is only used to prove two answers *different*
(see `clearly_different`); equality is still decided by math-verify.
"""
from __future__ import annotations

import cmath
import math
import re

_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[a-zA-Z]+|\\[,;!: ]|[-+*/^(){}\[\]]|[a-z])")
_SKIP = {"\\,", "\\;", "\\!", "\\:", "\\ ", "\\left", "\\right", "\\displaystyle"}
_MAX_EXPONENT = 1000.0


class _GiveUp(Exception):
    pass


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise _GiveUp(text[pos:])
        pos = m.end()
        tok = m.group(1)
        if tok not in _SKIP:
            out.append(tok)
    return out


class _Parser:
    def __init__(self, toks: list[str], env: dict[str, float] | None = None):
        self.toks, self.i, self.env = toks, 0, env or {}

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _GiveUp(f"expected {expected}")
        self.i += 1
        return tok

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.unary()
        divided = False
        while True:
            tok = self.peek()
            if tok in ("*", "/", "\\cdot", "\\times", "\\div"):
                self.take()
                divided = divided or tok in ("/", "\\div")
                rhs = self.unary()
                value = value / rhs if tok in ("/", "\\div") else value * rhs
            elif tok is not None and (tok in ("(", "{", "\\pi", "\\sqrt") or tok.startswith("\\frac")
                                      or tok in ("\\dfrac", "\\tfrac") or tok.isalpha()):
                prev = self.toks[self.i - 1]
                if tok.isalpha() and prev.isalpha():
                    raise _GiveUp("letters in a row")  # "ab", "sin", "ln": products or functions?
                if tok == "(" and prev.isalpha():
                    raise _GiveUp("function call?")  # f(x)
                if prev[0].isdigit() and tok in ("\\frac", "\\dfrac", "\\tfrac"):
                    raise _GiveUp("mixed number")  # 4\frac{2}{3}: math-verify reads 4 + 2/3
                if divided:
                    raise _GiveUp("ambiguous")  # 1/2\pi: (1/2)\pi or 1/(2\pi)?
                value = value * self.unary()  # implicit product: 3\sqrt{2}, 2\pi, 2(3+1)
            elif tok is not None and tok[0].isdigit():
                raise _GiveUp("two numbers in a row")
            else:
                return value

    def unary(self) -> float:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.group()  # LaTeX: one token or a braced group (2^10 is not 2^{10})
            if abs(exponent) > _MAX_EXPONENT:
                raise _GiveUp("huge exponent")
            if isinstance(base, complex) or isinstance(exponent, complex):
                if isinstance(exponent, complex) or exponent != int(exponent):
                    raise _GiveUp("branch")  # non-integer powers of complex numbers: leave to math-verify
            elif base < 0 and exponent != int(exponent):
                raise _GiveUp("not real")
            return base ** exponent
        return base

    def group(self) -> float:
        """A braced argument, or a single digit / command as in \\frac12 or \\sqrt2."""
        tok = self.peek()
        if tok == "{":
            self.take()
            value = self.expr()
            self.take("}")
            return value
        if tok is not None and tok[0].isdigit():
            self.take()
            if len(tok) > 1:  # \frac123 is \frac{1}{2}3: rare enough to leave to math-verify
                raise _GiveUp("multi-digit bare argument")
            return float(tok)
        if tok == "\\pi":
            self.take()
            return math.pi
        raise _GiveUp("argument")

    def atom(self) -> float:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return float(tok)
        if tok == "\\pi":
            return math.pi
        if tok == "i":  # math-verify may read i as the imaginary unit or as a symbol: a difference at i = 1j
            return 1j   # proves the answers different either way (a symbol may take any value)
        if tok == "e":
            return math.e  # likewise Euler's number or a symbol
        if tok.isalpha():
            if tok not in self.env:
                raise _GiveUp("variable")
            return self.env[tok]
        if tok in ("(", "{", "["):
            close = {"(": ")", "{": "}", "[": "]"}[tok]
            value = self.expr()
            self.take(close)
            return value
        if tok in ("\\frac", "\\dfrac", "\\tfrac"):
            num = self.group()
            den = self.group()
            return num / den
        if tok == "\\sqrt":
            index = 2.0
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            radicand = self.group()
            if isinstance(radicand, complex) or isinstance(index, complex) or radicand < 0 or index == 0:
                raise _GiveUp("not real")
            return radicand ** (1.0 / index)
        raise _GiveUp(tok)


def numeric_value(text: str, env: dict[str, float] | None = None) -> complex | None:
    """The value of a pure-number LaTeX expression (variables from `env`), or None when it is anything else."""
    if len(text) > 200:
        return None
    try:
        p = _Parser(_tokens(text), env)
        if not p.toks:
            return None
        value = p.expr()
        if p.peek() is not None:
            return None
    except (_GiveUp, ZeroDivisionError, OverflowError, ValueError):
        return None
    return value if cmath.isfinite(value) else None


def clearly_different(a: complex, b: complex) -> bool:
    """Far apart beyond any rounding math-verify applies (it rounds floats to 6 decimals)."""
    if cmath.isinf(a) or cmath.isinf(b):
        return a != b
    return abs(a - b) > 1e-4 * max(1.0, abs(a), abs(b))


# --------------------------------------------------------------------------------------------------------------
# Proving two answers different (tuples, sets, intervals, unions, matrices, expressions in one or more variables)
# --------------------------------------------------------------------------------------------------------------
# Expressions with variables are compared at a few fixed, non-special points: two expressions that differ clearly at
# one point are different functions, whatever math-verify would simplify. Agreeing values prove nothing.
_POINTS = [0.7313, 1.4142 + 0.1, -0.6180, 2.3026]
_CLEAN = re.compile(r"\\(?:left|right|displaystyle|!|,|;|:)|\^\{?\\circ\}?|\\circ")


def _letters(text: str) -> set[str] | None:
    try:
        return {t for t in _tokens(text) if t.isalpha() and t not in ("i", "e")}
    except _GiveUp:
        return None


def _value_at(text: str, env: dict[str, float]) -> float | None:
    t = text.strip()
    if t in ("\\infty", "+\\infty"):
        return math.inf
    if t == "-\\infty":
        return -math.inf
    return numeric_value(t, env)


def _scalars_differ(a: str, b: str) -> bool:
    la, lb = _letters(a), _letters(b)
    if la is None or lb is None:
        return False
    names = sorted(la | lb)
    envs = [{}] if not names else [{n: _POINTS[(j + k) % len(_POINTS)] * (1 + 0.37 * k) for k, n in
                                    enumerate(names)} for j in range(3)]
    for env in envs:
        va, vb = _value_at(a, env), _value_at(b, env)
        if va is not None and vb is not None and clearly_different(va, vb):
            return True
    return False


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        if text.startswith("\\{", i) or text[i] in "([{":
            depth += 1
        elif text.startswith("\\}", i) or text[i] in ")]}":
            depth -= 1
        if depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 2 if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "{}" else 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _closes_at_end(text: str) -> bool:
    depth = 0
    for i, c in enumerate(text):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(text) - 1:
            return False
    return depth == 0


def _collection(text: str) -> tuple[str, list[str]] | None:
    t = text.strip()
    if t.startswith("\\{") and t.endswith("\\}"):
        kind, inner = "set", t[2:-2]
    elif len(t) > 1 and t[0] in "([" and t[-1] in ")]" and _closes_at_end(t):
        kind, inner = t[0] + t[-1], t[1:-1]
    else:
        kind, inner = "bare", t
    items = _split_top(inner, ",")
    if len(items) < 2:
        return None
    if kind == "bare" and all(re.fullmatch(r"\d{3}", x) for x in items[1:]):
        return None  # 1,000: a thousands separator, not a list
    return kind, items


def _matrix(text: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}", text.strip(), re.DOTALL)
    if not m:
        return None
    return [[c.strip() for c in row.split("&")] for row in m.group(2).split("\\\\") if row.strip()]


def _interval(text: str) -> tuple[str, float, float] | None:
    c = _collection(text)
    if not c or c[0] not in ("()", "[]", "(]", "[)") or len(c[1]) != 2:
        return None
    lo, hi = _value_at(c[1][0], {}), _value_at(c[1][1], {})
    if lo is None or hi is None or isinstance(lo, complex) or isinstance(hi, complex):
        return None
    return c[0], lo, hi


def provably_different(a: str, b: str) -> str | None:
    """A reason when the two answers certainly differ, else None (let math-verify decide)."""
    a, b = _CLEAN.sub("", a).strip(), _CLEAN.sub("", b).strip()
    if any(ch in a + b for ch in "%=<>") or "\\text" in a + b or "\\mbox" in a + b:
        return None
    ua, ub = _split_top(a, "\\cup"), _split_top(b, "\\cup")
    if len(ua) > 1 or len(ub) > 1:
        ia, ib = [_interval(p) for p in ua], [_interval(p) for p in ub]
        if len(ia) != len(ib) or None in ia or None in ib:
            return None
        ia, ib = sorted(ia, key=lambda x: x[1]), sorted(ib, key=lambda x: x[1])
        for parts in (ia, ib):  # only disjoint unions have one spelling
            if any(not p[2] < q[1] for p, q in zip(parts, parts[1:])):
                return None
        for p, q in zip(ia, ib):
            if p[0] == q[0] and (clearly_different(p[1], q[1]) or clearly_different(p[2], q[2])):
                return "different unions of intervals"
        return None
    ma, mb = _matrix(a), _matrix(b)
    if ma is not None or mb is not None:
        if ma and mb and [len(r) for r in ma] == [len(r) for r in mb]:
            if any(_scalars_differ(x, y) for ra, rb in zip(ma, mb) for x, y in zip(ra, rb)):
                return "different matrix entries"
        return None
    ca, cb = _collection(a), _collection(b)
    if ca is not None or cb is not None:
        if not (ca and cb) or ca[0] != cb[0] or len(ca[1]) != len(cb[1]):
            return None
        if ca[0] in ("set", "bare"):  # unordered: compare sorted values
            va, vb = [_value_at(x, {}) for x in ca[1]], [_value_at(x, {}) for x in cb[1]]
            if None in va or None in vb:
                return None
            def order(z: complex) -> tuple[float, float]:
                return complex(z).real, complex(z).imag

            if any(clearly_different(x, y) for x, y in zip(sorted(va, key=order), sorted(vb, key=order))):
                return "different elements"
            return None
        if any(_scalars_differ(x, y) for x, y in zip(ca[1], cb[1])):
            return f"different entries of {ca[0][0]}…{ca[0][1]}"
        return None
    if _scalars_differ(a, b):
        return "different values" if not (_letters(a) or _letters(b)) else "different functions"
    return None

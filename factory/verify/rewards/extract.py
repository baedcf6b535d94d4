"""Find the final answer near the end of a long trace without parsing the trace.

A 20k-token trace is ~80k characters. Everything here works backwards from the end with `str.rfind` (a C scan)
and only hands short snippets to anything expensive (regexes with backtracking, math-verify's LaTeX parser).
"""
from __future__ import annotations

import re

BOX_COMMANDS = ("\\boxed", "\\fbox")
# Between two boxed answers that belong together: "\boxed{1}, \boxed{-2}" or "$\boxed{1}$ and $\boxed{2}$".
_JOINER = re.compile(r"^[\s,;$]*(?:(?:and|or|&|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad)[\s,;$]*)?$")


def tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[-chars:]


def _braced(text: str, open_at: int) -> tuple[str, int] | None:
    """Content of the brace group opening at `open_at` and the index after it; None if unbalanced."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip escaped characters, e.g. \{ \}
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i], i + 1
        i += 1
    return None


def _boxed_at(text: str, start: int, cmd: str) -> tuple[str, int] | None:
    """Parse `\\boxed{...}` or `\\boxed 5` starting at `start`; return (content, end)."""
    j = start + len(cmd)
    n = len(text)
    while j < n and text[j] == " ":
        j += 1
    if j < n and text[j] == "{":
        return _braced(text, j)
    if j > start + len(cmd):  # "\boxed 5": a single token up to whitespace or $
        m = re.match(r"[^\s$]+", text[j:j + 200])
        if m:
            return m.group(0), j + m.end()
    return None


def _boxes_backwards(text: str, joins) -> list[tuple[int, int, str]]:
    """(start, end, content) of the last box and of the boxes before it that `joins(gap)` accepts, right to left."""
    found: list[tuple[int, int, str]] = []
    end = len(text)
    while True:
        start, cmd = max((text.rfind(c, 0, end), c) for c in BOX_COMMANDS)
        if start < 0:
            return found
        parsed = _boxed_at(text, start, cmd)
        if parsed is not None:
            content, stop = parsed
            if found and not joins(text[stop:found[-1][0]]):
                return found
            found.append((start, stop, content))
        end = start


def last_boxed(text: str, join_adjacent: bool = True) -> str | None:
    """Content of the last `\\boxed{}` / `\\fbox{}` in `text`.

    With `join_adjacent`, boxes separated only by commas/"and"/`$` are joined with ", " (a model that writes
    `\\boxed{1}, \\boxed{-2}` for "1, -2"), scanning backwards from the last one.
    """
    joins = (lambda gap: bool(_JOINER.match(gap))) if join_adjacent else (lambda gap: False)
    found = _boxes_backwards(text, joins)
    if not found:
        return None
    return ", ".join(c.strip() for _, _, c in reversed(found))


# Between boxes of one final statement: spacing, commas, math delimiters, words and short labels, but no sentence end
# (. ! ? :), no line break and no other math: `\boxed{(2,2)} \quad \text{and} \quad \boxed{(6,2)}`,
# `\(\boxed{1}\) and \(\boxed{-2}\)`, `\boxed{1} papers and \boxed{2} bins`, `y_1 = \boxed{a} \) and \( y_2 = \boxed{b}`.
_GAP = re.compile(r"""(?>[ \t]+|[,;&~$]|\\[()\[\]]|\\(?:q?quad\b|[,;!: ])|\\\\
    |\\(?:text|textbf|textit|textnormal|textrm|mbox|mathrm)\s*\{[A-Za-z \t,;()']*\}
    |\([A-Za-z]{1,4}\)|[A-Za-z](?:_\{?\w{1,3}\}?)?[ \t]*=|[A-Za-z]+)*+""", re.VERBOSE)  # atomic: linear time
_GAP_MAX = 80
_GAP_WORDS = 4  # "\\text{ for part (a) and }"; a longer phrase between two boxes is prose about two results
_CONNECTIVE = re.compile(r"\b(?:and|or)\b|[,;&]")


def _joins(gap: str) -> bool:
    """Whether two boxes with `gap` between them belong to one answer: spacing and delimiters only, or a phrase of
    at most four words with a connective ("and", "or", a comma): `\\boxed{1} papers and \\boxed{2} bins` joins,
    `\\boxed{1} no no no \\boxed{2}` does not."""
    if len(gap) > _GAP_MAX or not _GAP.fullmatch(gap):
        return False
    words = re.sub(r"\\[A-Za-z]+", "", gap)
    count = len(re.findall(r"[A-Za-z]{2,}", words))
    return count == 0 or (count <= _GAP_WORDS and bool(_CONNECTIVE.search(words)))


def final_boxes(text: str) -> tuple[str, int, int] | None:
    """(content, start, end) of the boxes of the final statement: the last `\\boxed{}` / `\\fbox{}` and those before
    it in the same sentence, separated only by words, spacing or punctuation (see `_GAP`), joined with ", "."""
    found = _boxes_backwards(text, _joins)
    if not found:
        return None
    contents = [c.strip() for _, _, c in reversed(found) if c.strip()] or [""]
    return ", ".join(contents), found[-1][0], found[0][1]


FINAL_STATEMENT = re.compile(r"final\s+answer\s*(?:is\b|:|=)", re.IGNORECASE)
_STATEMENT = re.compile(r"final\s+answer\s*(?:is\b|:|=)|answer\s+is\b", re.IGNORECASE)


def last_statement(text: str, window: int, start: int = 0, final_only: bool = False) -> int:
    """Index of the last final-answer statement ("final answer is", "the answer is") at or after `start`, -1 if none.

    Searches the last `window` characters first and grows the window (x4) until it finds one or covers the text."""
    pattern = FINAL_STATEMENT if final_only else _STATEMENT
    w = max(window, 1)
    while True:
        lo = max(start, len(text) - w)
        last = None
        for last in pattern.finditer(text, lo):
            pass
        if last is not None:
            return last.start()
        if lo <= start:
            return -1
        w *= 4


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last `<tag>…</tag>`; an unclosed last tag yields None."""
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    open_ = text.rfind(f"<{tag}>", 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(tag) + 2:close]


def last_pattern(text: str, pattern: re.Pattern[str], window: int) -> str | None:
    """Last match of `pattern` (its first group, or the whole match) in the last `window` characters."""
    last = None
    for last in pattern.finditer(tail(text, window)):
        pass
    if last is None:
        return None
    return last.group(1) if pattern.groups else last.group(0)


_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)


def last_code_block(text: str, languages: tuple[str, ...]) -> tuple[str | None, str]:
    """The last fenced block tagged with one of `languages` (or untagged when none is tagged so).

    Returns (code, how) where `how` says which rule found it."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for lang, code in reversed(blocks):
        if lang in languages:
            return code, f"last ```{lang} block"
    for lang, code in reversed(blocks):
        if not lang:
            return code, "last untagged ``` block"
    # An unterminated final fence (the model ran out of tokens inside its code) is not an answer.
    return None, "no fenced code block of " + "/".join(languages)

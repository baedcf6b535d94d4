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


def last_boxed(text: str, join_adjacent: bool = True) -> str | None:
    """Content of the last `\\boxed{}` / `\\fbox{}` in `text`.

    With `join_adjacent`, boxes separated only by commas/"and"/`$` are joined with ", " (a model that writes
    `\\boxed{1}, \\boxed{-2}` for "1, -2"), scanning backwards from the last one.
    """
    found: list[tuple[int, int, str]] = []  # (start, end, content), right to left
    end = len(text)
    while True:
        start, cmd = max((text.rfind(c, 0, end), c) for c in BOX_COMMANDS)
        if start < 0:
            break
        parsed = _boxed_at(text, start, cmd)
        if parsed is not None:
            content, stop = parsed
            if found and not (join_adjacent and _JOINER.match(text[stop:found[-1][0]])):
                break
            found.append((start, stop, content))
            if not join_adjacent:
                break
        end = start
        if not join_adjacent and found:
            break
    if not found:
        return None
    return ", ".join(c.strip() for _, _, c in reversed(found))


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

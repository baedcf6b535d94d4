"""Reading JSONL with errors that name the file and line (malformed JSON, non-UTF-8 bytes, non-object rows)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def _json_error(path: Path, lineno: int, line: str, exc: json.JSONDecodeError) -> str:
    """`FILE:LINE: malformed JSON at column C: why, near …⟨here⟩…`; the column counts characters of the line (1-based),
    so it matches an editor's; a line that ends mid-object says so (a truncated or pretty-printed record)."""
    text = line.rstrip("\r\n")
    pos = min(exc.pos, len(text))
    if pos >= len(text.rstrip()):
        hint = ("the line ends before the JSON value is complete (each line must hold one whole JSON object: "
                "a truncated line, or pretty-printed JSON spread over several lines?)")
        return f"{path}:{lineno}: malformed JSON at column {pos + 1}: {exc.msg}; {hint}"
    near = text[max(0, pos - 20):pos] + "⟨here⟩" + text[pos:pos + 20]
    return f"{path}:{lineno}: malformed JSON at column {pos + 1}: {exc.msg}, near {near!r}"


def iter_jsonl(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; raise `error("FILE:LINE: why")` on a bad line (a UTF-8
    byte-order mark at the start of the file is allowed)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(_json_error(path, lineno, line, exc)) from None
            if not isinstance(row, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def iter_log(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (line number, object, None) for each non-blank line of a log the factory appends to (a ledger, a step
    log), or (line number, None, why) for a line that is not a JSON object (one a kill tore); nothing when the file
    is missing. Readers skip or note the bad lines; the writer's next append is unaffected."""
    path = Path(path)
    if not path.exists():
        return
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"not JSON ({exc.msg})"
            continue
        if isinstance(entry, dict):
            yield number, entry, None
        else:
            yield number, None, f"not a JSON object ({type(entry).__name__})"

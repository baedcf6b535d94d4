"""Small helpers shared by the publish modules: the error type, JSON reading, atomic writes, secret redaction."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factory.core.shards import write_json_atomic, write_text_atomic  # noqa: F401  (re-exported: one atomic writer)


class PublishError(ValueError):
    """Publishing cannot go on; the message names the file, field or setting at fault."""


# Keys whose values never reach a card, a log or a copied config (an OpenAI-compatible teacher's api_key, ...).
# "token" alone is too broad (max_tokens, eos_token), so token keys are listed by name.
_SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|apikey|secret|password|passwd|authorization|credentials?)($|[_-])",
                         re.IGNORECASE)
_SECRET_TOKEN_KEYS = {"token", "hf_token", "hub_token", "access_token", "auth_token", "api_token", "bearer_token"}
REDACTED = "[redacted]"


def is_secret_key(key: object) -> bool:
    return str(key).lower() in _SECRET_TOKEN_KEYS or bool(_SECRET_KEY.search(str(key)))


def redact(value: Any) -> Any:
    """A copy of a config tree with the values of secret-looking keys replaced by a marker."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def read_json(path: Path, required: bool = False) -> Any:
    """The JSON document at `path`; None when it is absent and not required; a PublishError naming it when broken."""
    if not path.exists():
        if required:
            raise PublishError(f"{path}: missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (blank lines skipped); a PublishError names the broken line."""
    rows = []
    if not path.exists():
        return rows
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PublishError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from exc
    return rows


def stage_config(run_dir: Path, stage: str) -> dict | None:
    """The `config` block of DIR/<stage>/manifest.json, with secrets redacted; None when the stage left no manifest."""
    manifest = read_json(run_dir / stage / "manifest.json")
    if manifest is None:
        return None
    if not isinstance(manifest, dict):
        raise PublishError(f"{run_dir / stage / 'manifest.json'}: expected a JSON object")
    config = manifest.get("config")
    return redact(config) if isinstance(config, dict) else None


def fresh_dir(final: Path) -> Path:
    """An empty scratch folder beside `final`, to be swapped in by `commit_dir` once complete."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path, keep: tuple[str, ...] = (".cache",)) -> None:
    """Replace `final` by the completed `tmp`, carrying over the entries named in `keep` (upload resume state)."""
    if final.exists():
        for name in keep:
            if (final / name).exists() and not (tmp / name).exists():
                os.replace(final / name, tmp / name)
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Build `final` in a scratch folder beside it: swapped in when the block completes, removed if it fails."""
    tmp = fresh_dir(final)
    try:
        yield tmp
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file that an upload of `folder` sends, sorted; hidden state folders skipped."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append((rel.as_posix(), path.stat().st_size))
    return out


def assert_secret_absent(folder: Path, secret: str | None) -> None:
    """Refuse a built folder in which any file holds `secret` (the Hub token) verbatim."""
    if not secret:
        return
    needle = secret.encode()
    for rel, _ in folder_files(folder):
        with open(folder / rel, "rb") as fh:
            # Read in overlapping blocks so a large shard is never held whole in memory.
            tail = b""
            while block := fh.read(1 << 24):
                if needle in tail + block:
                    raise PublishError(f"{folder / rel}: contains the Hugging Face token; refusing to publish it")
                tail = block[-len(needle):]

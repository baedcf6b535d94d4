"""Prompt ingestion: JSONL, Parquet, CSV, a local `datasets` folder, a Hub dataset id, or the built-in arithmetic
generator, each mapped onto the prompt schema through a column mapping."""
from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

from factory.core.jsonl import iter_jsonl
from factory.generate.config import (  # noqa: F401
    DOMAINS,
    PROMPT_FIELDS,
    ArithmeticSource,
    FileSource,
    HubSource,
    SourceConfig,
    _SourceBase,
)


class SourceError(ValueError):
    """A prompt source is missing, malformed or maps onto the prompt schema wrongly."""


def stable_prompt_id(source: str, problem: str) -> str:
    return hashlib.sha1(f"{source}\n{problem}".encode()).hexdigest()[:16]


# -- readers ------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, row in iter_jsonl(path, SourceError):
        yield f"{path}:{lineno}", row


def _read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.DictReader(fh), 2):
                yield f"{path}:{lineno}", row
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    for file in files:
        pf = pq.ParquetFile(file)
        index = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"{file}: row {index}", row
                index += 1


def _read_datasets(ds, label: str) -> Iterator[tuple[str, dict]]:
    for index, row in enumerate(ds):
        yield f"{label}: row {index}", row


def _rows(cfg: FileSource | HubSource) -> Iterator[tuple[str, dict]]:
    if isinstance(cfg, HubSource):
        import datasets

        try:
            ds = datasets.load_dataset(cfg.dataset, cfg.name, split=cfg.split, data_files=cfg.data_files)
        except Exception as exc:  # datasets raises many types; the message is what the user needs
            raise SourceError(f"dataset {cfg.dataset!r} (split {cfg.split!r}) could not be loaded: {exc}") from exc
        return _read_datasets(ds, cfg.dataset)
    path = cfg.path
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if cfg.kind == "jsonl":
        return _read_jsonl(path)
    if cfg.kind == "csv":
        return _read_csv(path)
    if cfg.kind == "parquet":
        return _read_parquet(path)
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split is None:
            raise SourceError(f"{path}: a DatasetDict with splits {list(ds)}; set `split`")
        ds = ds[cfg.split]
    return _read_datasets(ds, str(path))


def _to_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


_USER, _ASSISTANT = ("user", "human"), ("assistant", "gpt")


def _first_turns(where: str, turns: list) -> tuple[str | None, str | None]:
    """(first user turn, the assistant turn after it, as the reference) of an OpenAI `messages` or ShareGPT
    `conversations` list."""
    user = reply = None
    for turn in turns:
        if not isinstance(turn, dict):
            raise SourceError(f"{where}: a chat column must be a list of {{role, content}} or {{from, value}} turns")
        role, text = turn.get("role", turn.get("from")), turn.get("content", turn.get("value"))
        if user is None and role in _USER:
            user = text
        elif user is not None and role in _ASSISTANT:
            reply = text if isinstance(text, str) and text.strip() else None
            break
    if user is None:
        raise SourceError(f"{where}: the chat column has no user turn")
    return user, reply


def _map_row(where: str, row: dict, cfg: FileSource | HubSource, source_name: str) -> dict:
    def column(field: str, required: bool = False):
        col = cfg.columns.get(field, field)
        if col not in row:
            if required or field in cfg.columns:
                raise SourceError(f"{where}: missing column {col!r} (mapped to prompt field {field!r}); "
                                  f"columns present: {sorted(row)}")
            return None
        return row[col]

    problem = column("problem", required=True)
    reply = None
    if isinstance(problem, list):  # a chat column (general data: messages / ShareGPT conversations)
        problem, reply = _first_turns(where, problem)
    if not isinstance(problem, str) or not problem.strip():
        raise SourceError(f"{where}: empty or non-text problem")
    domain = column("domain") or cfg.domain
    if domain not in DOMAINS:
        raise SourceError(f"{where}: domain {domain!r} is not one of {DOMAINS}")
    metadata = column("metadata")
    source = _to_text(column("source")) or source_name
    return {
        "prompt_id": _to_text(column("prompt_id")) or stable_prompt_id(source, problem),
        "source": source,
        "domain": domain,
        "problem": problem,
        "answer": _to_text(column("answer")) if reply is None or "answer" in cfg.columns else reply,
        "tests": _to_text(column("tests")),
        "language": _to_text(column("language")) or cfg.language,
        "metadata": _to_text(metadata) if metadata is not None else None,
    }


# -- the arithmetic generator -------------------------------------------------------------------------------
_STORIES = {
    "add": ["{name} has {a} {thing}. {pronoun} gets {b} more. How many {thing} does {name} have now?",
            "What is {a} + {b}?",
            "A box holds {a} {thing} and another holds {b}. How many {thing} are there in all?"],
    "sub": ["{name} has {a} {thing} and gives away {b}. How many {thing} are left?",
            "What is {a} - {b}?"],
    "mul": ["{name} buys {a} bags with {b} {thing} in each. How many {thing} does {name} buy?",
            "What is {a} \\times {b}?"],
}
_NAMES = [("Tom", "He"), ("Ana", "She"), ("Lee", "He"), ("Mia", "She"), ("Sam", "He"), ("Zoe", "She")]
_THINGS = ["apples", "marbles", "books", "coins", "stickers", "pencils"]


def arithmetic_problems(cfg: ArithmeticSource) -> list[dict]:
    """Deterministic problems; `train` and `heldout` splits never share an (operation, a, b) triple."""
    rng = random.Random(cfg.seed)
    chosen: dict[tuple, dict] = {}
    space = len(cfg.ops) * cfg.max_operand ** 2
    if cfg.n > space * (cfg.heldout_fraction if cfg.split == "heldout" else 1 - cfg.heldout_fraction) * 0.9:
        raise SourceError(f"arithmetic: n={cfg.n} is too many distinct problems for max_operand={cfg.max_operand}")
    while len(chosen) < cfg.n:
        op = rng.choice(cfg.ops)
        a, b = rng.randint(1, cfg.max_operand), rng.randint(1, cfg.max_operand)
        if op == "sub" and b > a:
            a, b = b, a
        triple = (op, a, b)
        bucket = int(hashlib.sha1(repr(triple).encode()).hexdigest(), 16) % 1000 / 1000
        if (bucket < cfg.heldout_fraction) != (cfg.split == "heldout") or triple in chosen:
            continue
        name, pronoun = rng.choice(_NAMES)
        problem = rng.choice(_STORIES[op]).format(name=name, pronoun=pronoun, thing=rng.choice(_THINGS), a=a, b=b)
        answer = {"add": a + b, "sub": a - b, "mul": a * b}[op]
        source = cfg.source or f"arithmetic-{cfg.split}"
        chosen[triple] = {"prompt_id": f"{source}-{op}-{a}-{b}", "source": source, "domain": "math",
                          "problem": problem, "answer": str(answer), "tests": None, "language": cfg.language,
                          "metadata": json.dumps({"op": op, "a": a, "b": b})}
    return list(chosen.values())


# -- entry point --------------------------------------------------------------------------------------------
def _source_label(cfg: SourceConfig) -> str:
    if isinstance(cfg, ArithmeticSource):
        return f"arithmetic source (seed {cfg.seed}, split {cfg.split})"
    return cfg.dataset if isinstance(cfg, HubSource) else str(cfg.path)


def _located(cfg: SourceConfig) -> list[tuple[str, dict]]:
    """(where, prompt) of every prompt of one source; `where` is FILE:LINE, FILE: row N or the source's name. A
    file or dataset with no rows is an error naming it."""
    if isinstance(cfg, ArithmeticSource):
        label = _source_label(cfg)
        return [(f"{label}: problem {i}", p) for i, p in enumerate(arithmetic_problems(cfg))]
    name = cfg.source or (cfg.dataset if isinstance(cfg, HubSource) else cfg.path.name)
    out = []
    for where, row in _rows(cfg):
        out.append((where, _map_row(where, row, cfg, name)))
        if cfg.limit and len(out) >= cfg.limit:
            break
    if not out:
        raise SourceError(f"{_source_label(cfg)}: no prompts in it (the file or dataset is empty, or holds only "
                          f"blank lines); fill it or remove it from `prompts:`")
    return out


def load_source(cfg: SourceConfig) -> list[dict]:
    return [prompt for _, prompt in _located(cfg)]


def load_prompts(sources: list[SourceConfig]) -> list[dict]:
    """All prompts of all sources, in order; an empty source or a duplicated prompt_id is an error naming the
    file and line (or row) of each copy."""
    located: list[tuple[str, dict]] = []
    for cfg in sources:
        located.extend(_located(cfg))
    if not located:
        raise SourceError("the prompt set is empty: `prompts:` lists no source")
    seen: dict[str, str] = {}
    dupes = []
    for where, p in located:
        if p["prompt_id"] in seen:
            dupes.append(f"{p['prompt_id']!r} ({seen[p['prompt_id']]} and {where})")
        seen.setdefault(p["prompt_id"], where)
    if dupes:
        raise SourceError(f"duplicate prompt ids: {', '.join(dupes[:5])}" + (" …" if len(dupes) > 5 else "")
                          + "; give each prompt its own id (or drop the prompt_id column mapping to derive ids)")
    return [p for _, p in located]

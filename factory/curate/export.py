"""Training-ready shapes of a curated sample: the `messages` column (OpenR1-Math-220k / Mixture-of-Thoughts style)
and JSONL exports (`factory export`): `messages` ({"messages": [...]}, what `factory mix` reads back), ShareGPT, and
ShareGPT with LLaMA-Factory's `dataset_info.json`. Exports stream, batch by batch, into a temp file renamed into
place."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from factory.core.shards import write_text_atomic


def assistant_content(reasoning: str, answer_text: str) -> str:
    """`<think>\\n{reasoning}\\n</think>\\n\\n{answer}`, the R1 reply pattern (surrounding blank lines trimmed)."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer_text.strip()}"


def to_messages(problem: str, reasoning: str, answer_text: str) -> list[dict[str, str]]:
    """No system turn (R1 usage): the user asks the problem, the assistant thinks then answers."""
    return [{"role": "user", "content": problem},
            {"role": "assistant", "content": assistant_content(reasoning, answer_text)}]


SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def to_sharegpt(messages: list[dict[str, str]]) -> dict:
    """LLaMA-Factory's sharegpt format: {"conversations": [{"from": "human"|"gpt", "value": ...}], "system"?}."""
    conv, system = [], None
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
            continue
        if m["role"] not in SHAREGPT_ROLES:
            raise ValueError(f"message role {m['role']!r} has no ShareGPT equivalent")
        conv.append({"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]})
    out = {"conversations": conv}
    if system is not None:
        out["system"] = system
    return out


def llamafactory_dataset_info(name: str, file_name: str) -> dict:
    """The `dataset_info.json` entry telling LLaMA-Factory how to read the exported file."""
    return {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "system": "system"},
                   "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                            "assistant_tag": "gpt", "system_tag": "system"}}}


def curated_shards(curated_dir: Path) -> list[Path]:
    shards = sorted(Path(curated_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{curated_dir}: no part-*.parquet shards to export")
    return shards


def iter_messages(curated_dir: Path, batch_size: int = 1024) -> Iterator[list[dict[str, str]]]:
    """Stream the `messages` column of a curated folder, shard by shard, batch by batch (bounded memory)."""
    for shard in curated_shards(curated_dir):
        pf = pq.ParquetFile(shard)
        if "messages" not in pf.schema_arrow.names:
            raise ValueError(f"{shard}: no 'messages' column (not a curated shard?)")
        for batch in pf.iter_batches(batch_size=batch_size, columns=["messages"]):
            yield from batch.column(0).to_pylist()


def write_jsonl_atomic(rows: Iterable[dict], path: Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def export_sharegpt(curated_dir: Path, out_path: Path, dataset_name: str = "factory_r1",
                    dataset_info: bool = True) -> int:
    """Write `out_path` (ShareGPT JSONL) and, with `dataset_info`, LLaMA-Factory's `dataset_info.json` beside it
    (an existing one keeps its other entries); return the number of samples."""
    out_path = Path(out_path)
    n = write_jsonl_atomic((to_sharegpt(m) for m in iter_messages(curated_dir)), out_path)
    if dataset_info:
        info = out_path.parent / "dataset_info.json"
        entries = json.loads(info.read_text()) if info.exists() else {}
        entries.update(llamafactory_dataset_info(dataset_name, out_path.name))
        write_text_atomic(info, json.dumps(entries, indent=2) + "\n")
    return n


def export_messages(curated_dir: Path, out_path: Path) -> int:
    """Write `out_path` as JSONL of `{"messages": [...]}` (TRL's conversational shape); return the samples."""
    return write_jsonl_atomic(({"messages": m} for m in iter_messages(curated_dir)), out_path)


EXPORT_FORMATS = ("messages", "sharegpt", "llamafactory")


def export_source(path: Path) -> Path:
    """The shard folder to export: `path` itself when it holds part-*.parquet, else a run folder's curate/."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (a curate or mix folder, or a run folder)")
    if not any(path.glob("part-*.parquet")) and any((path / "curate").glob("part-*.parquet")):
        return path / "curate"
    return path


def export(curated_dir: Path, fmt: str, out_path: Path, dataset_name: str = "factory_r1") -> int:
    """Export a folder of curated (or mixed) shards, or a run folder's curate/, in format `fmt` (EXPORT_FORMATS)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format {fmt!r}: one of {', '.join(EXPORT_FORMATS)}")
    curated_dir = export_source(curated_dir)
    if fmt == "messages":
        return export_messages(curated_dir, out_path)
    return export_sharegpt(curated_dir, out_path, dataset_name, dataset_info=fmt == "llamafactory")

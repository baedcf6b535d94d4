"""The one shard runner: atomic Parquet shards, an exactly-once ledger, resume, a worker pool and progress.

A stage's output folder holds:
- `part-NNNNN.parquet`: the output of work unit N, written to a temp file and renamed into place (the rename is the
  commit; a reader never sees half a shard);
- `rejected/part-NNNNN.parquet`: the records unit N dropped, with their reasons (renamed before the part);
- `ledger.jsonl`: one line per committed unit with its (prompt_id, sample_idx) keys and drop counts; a unit whose
  part exists but whose ledger line was lost in a crash is re-entered from the part itself on the next start;
- `manifest.json`: the stage, its schema, the fingerprint of everything that decides the output (the config, the
  plan and the identity of the input stage), written just before the first unit is committed; a rerun whose
  fingerprint differs is refused (`StageConfigChanged`, naming what changed) unless told to start a new run;
- `counts.json`: records in/out and drops by reason, written when every unit is committed;
- `.lock`: the writer's lock (`factory.core.lock`): one process writes a stage folder at a time.

Work units are planned deterministically from the input, so a rerun after `kill -9` at any moment skips the
committed units and redoes the rest: no record lost, none doubled.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core import lock
from factory.core.identity import (
    StageConfigChanged,
    UpstreamNotReady,
    changed_error,
    file_sha256,
    fingerprint,
    require_finished,
)
from factory.core.schema import Schema, SchemaError, check_shard_schema

PART = "part-{:05d}.parquet"


@dataclass
class ShardResult:
    """What one work unit produced: output rows, rejected rows (with reasons) and drop counts by reason."""

    rows: list[dict]
    rejected: list[dict] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    _fsync_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file (UTF-8) so that it either exists whole or not at all; creates the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _fsync_write(path, text.encode("utf-8"))


def write_parquet_tmp(table: pa.Table, path: Path, suffix: str | None = None) -> Path:
    """Write `table` to a synced temp file beside `path` (rename it into place to commit). An empty table gets no
    row group: one of 0 rows makes `datasets.load_dataset("parquet")` fail ("BatchSize must be > 0")."""
    tmp = path.with_name(f".{path.name}.tmp-{suffix or os.getpid()}")
    if table.num_rows:
        pq.write_table(table, tmp, compression="zstd")
    else:
        pq.ParquetWriter(tmp, table.schema, compression="zstd").close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    return tmp


def write_table_atomic(path: Path, table: pa.Table) -> None:
    """Write a Parquet file so that it either exists whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(write_parquet_tmp(table, path), path)


class StageDir:
    """One stage's output folder: parts, rejected parts, ledger, manifest and counts."""

    def __init__(self, path: Path, stage: str, schema: Schema, rejected_schema: Schema | None = None,
                 key_columns: tuple[str, ...] = ("prompt_id", "sample_idx")):
        self.key_columns = key_columns
        self.path = Path(path)
        self.stage = stage
        self.schema = schema
        self.rejected_schema = rejected_schema
        self.ledger_path = self.path / "ledger.jsonl"
        self.manifest_path = self.path / "manifest.json"
        self.counts_path = self.path / "counts.json"
        self._pending_manifest: dict | None = None  # a fresh folder's manifest, written at its first commit
        self._own_lock = False  # whether `prepare` took the writer lock (else a `stage_lock` around us holds it)

    # -- set-up ---------------------------------------------------------------------------------------------
    def prepare(self, fp: str, config: dict, plan: dict, new_run: bool = False, *, inputs: dict | None = None,
                prefix: str = "") -> None:
        """Take the folder's writer lock, then create the folder or check an existing one was made by the same
        configuration, plan and input (`inputs`: name -> identity of each input stage). `prefix` is the config
        block the keys of `config` live in (e.g. "verify."), for the message naming what changed. The manifest
        is written only when the first unit commits: a start that fails before leaves none behind."""
        if not lock.is_held(self.path):
            lock.acquire(self.path)
            self._own_lock = True
        try:
            self._check(fp, config, plan, new_run, inputs, prefix)
        except BaseException:
            self.release()
            raise

    def _check(self, fp: str, config: dict, plan: dict, new_run: bool, inputs: dict | None, prefix: str) -> None:
        if new_run:
            lock.clear_folder(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._remove_dead_tmp()
        self._repair_ledger()
        if inputs is not None:
            fp = fingerprint({"fingerprint": fp, "inputs": inputs})
        manifest = {"stage": self.stage, "schema": self.schema.name, "schema_version": self.schema.version,
                    "fingerprint": fp, "config": config, "plan": plan}
        if inputs is not None:
            manifest["inputs"] = inputs
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            if old.get("fingerprint") == fp:
                return
            if lock.has_shards(self.path):
                raise changed_error(self.path, old, config, plan, inputs, prefix)
            self.manifest_path.unlink()  # nothing was committed under it: nothing to keep
        self._pending_manifest = manifest
        self.counts_path.unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        """The pending manifest of a fresh folder, written just before its first commit."""
        manifest = self._pending_manifest
        if manifest is not None:
            write_json_atomic(self.manifest_path, {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            self._pending_manifest = None

    def release(self) -> None:
        """Give back the writer lock `prepare` took (a stage run under `lock.stage_lock` keeps that one)."""
        if self._own_lock:
            lock.release(self.path)
            self._own_lock = False

    def _remove_dead_tmp(self) -> None:
        """Temp files of writers that are gone (the suffix is the writer's pid); a live writer's stay."""
        for tmp in list(self.path.glob(".*.tmp-*")) + list(self.path.glob("rejected/.*.tmp-*")):
            pid = tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            tmp.unlink(missing_ok=True)

    def _repair_ledger(self) -> None:
        """Cut a last line torn by a crash (its part, if renamed, is recovered from the part itself), so that the
        next append starts on a line of its own."""
        if not self.ledger_path.exists():
            return
        data = self.ledger_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.ledger_path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())

    # -- ledger ---------------------------------------------------------------------------------------------
    def ledger(self) -> dict[int, dict]:
        """Committed units. Lines cut short by a crash are ignored; parts without a line are recovered."""
        entries: dict[int, dict] = {}
        if self.ledger_path.exists():
            for line in self.ledger_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line: its part (if renamed) is recovered below
                entries[entry["unit"]] = entry
        for part in sorted(self.path.glob("part-*.parquet")):
            unit = int(part.stem.split("-")[1])
            if unit not in entries:
                entry = self._entry_from_part(unit, part)
                self._append_ledger(entry)
                entries[unit] = entry
        return entries

    def _entry_from_part(self, unit: int, part: Path) -> dict:
        table = pq.read_table(part, columns=[c for c in self.key_columns if c in self.schema.names])
        rejected_path = self.path / "rejected" / PART.format(unit)
        rejected = pq.read_metadata(rejected_path).num_rows if rejected_path.exists() else 0
        meta = pq.read_schema(part).metadata or {}
        dropped = json.loads(meta.get(b"factory.dropped", b"{}"))
        return {"unit": unit, "part": part.name, "rows": table.num_rows, "rejected": rejected,
                "dropped": dropped, "keys": _keys(table.to_pylist(), self.key_columns), "sha256": file_sha256(part),
                "recovered": True}

    def _append_ledger(self, entry: dict) -> None:
        with open(self.ledger_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # -- commit ---------------------------------------------------------------------------------------------
    def write_unit_files(self, unit: int, result: ShardResult, tmp_suffix: str) -> tuple[Path, Path | None]:
        """Write a unit's part (and rejected part) to temp files; `commit` renames them into place."""
        table = self.schema.table(result.rows)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"factory.dropped": json.dumps(result.dropped).encode()})
        part_tmp = write_parquet_tmp(table, self.path / PART.format(unit), tmp_suffix)
        rej_tmp = None
        if result.rejected:
            rej_schema = self.rejected_schema or self.schema
            (self.path / "rejected").mkdir(exist_ok=True)
            rej_tmp = write_parquet_tmp(rej_schema.table(result.rejected), self.path / "rejected" / PART.format(unit),
                                        tmp_suffix)
        return part_tmp, rej_tmp

    def commit(self, unit: int, part_tmp: Path, rej_tmp: Path | None, entry: dict) -> None:
        """Rename a unit's temp files into place and ledger it (with its part's checksum)."""
        self._write_manifest()
        entry.setdefault("sha256", file_sha256(part_tmp))
        if rej_tmp is not None:
            os.replace(rej_tmp, self.path / "rejected" / PART.format(unit))
        os.replace(part_tmp, self.path / PART.format(unit))
        self._append_ledger(entry)

    def commit_result(self, unit: int, result: ShardResult) -> dict:
        part_tmp, rej_tmp = self.write_unit_files(unit, result, str(os.getpid()))
        entry = _ledger_entry(unit, result, self.key_columns)
        self.commit(unit, part_tmp, rej_tmp, entry)
        return entry

    # -- finish ---------------------------------------------------------------------------------------------
    def finalize(self, records_in: int, extra: dict | None = None, dropped: dict[str, int] | None = None) -> dict:
        """Write counts.json from the ledger; `dropped` adds drops made before any unit (e.g. decontaminated
        prompts)."""
        entries = self.ledger()
        dropped = Counter(dropped or {})
        for e in entries.values():
            dropped.update(e.get("dropped", {}))
        keys = [tuple(k) for e in entries.values() for k in e.get("keys", [])]
        if len(keys) != len(set(keys)):
            raise RuntimeError(f"{self.path}: duplicated {self.key_columns} keys across parts")
        counts = {"stage": self.stage, "records_in": records_in,
                  "records_out": sum(e["rows"] for e in entries.values()),
                  "rejected": sum(e.get("rejected", 0) for e in entries.values()),
                  "dropped": dict(sorted(dropped.items())), "units": len(entries), "extra": extra or {}}
        self._write_manifest()
        write_json_atomic(self.counts_path, counts)
        self.release()
        return counts

    def is_complete(self) -> bool:
        return self.counts_path.exists()


def _keys(rows: Iterable[dict], columns: Sequence[str] = ("prompt_id", "sample_idx")) -> list[list]:
    return [[r[c] for c in columns] for r in rows if all(c in r for c in columns)]


def _ledger_entry(unit: int, result: ShardResult, columns: Sequence[str] = ("prompt_id", "sample_idx")) -> dict:
    return {"unit": unit, "part": PART.format(unit), "rows": len(result.rows), "rejected": len(result.rejected),
            "dropped": result.dropped, "keys": _keys(result.rows, columns), "stats": result.stats}


# -- reading ------------------------------------------------------------------------------------------------
def list_parts(stage_path: Path) -> list[Path]:
    stage_path = Path(stage_path)
    if not stage_path.is_dir():
        raise FileNotFoundError(f"{stage_path}: no such stage folder (run the stage that writes it first)")
    return sorted(stage_path.glob("part-*.parquet"))


def read_part(path: Path, expected_schema: str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """Read one shard, refusing shards of an unknown schema or version."""
    check_shard_schema(path, pq.read_schema(path), expected_schema)
    return pq.read_table(path, columns=list(columns) if columns else None)


def require_complete(stage_path: Path, reader: str | None = None) -> None:
    """An input stage must have finished (`UpstreamNotReady` says whether it never ran or stopped part-way)."""
    require_finished(stage_path, reader)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def iter_stage_rows(stage_path: Path, expected_schema: str | None = None,
                    columns: Sequence[str] | None = None) -> Iterator[dict]:
    """Stream the rows of a finished stage, part by part."""
    for part in list_parts(stage_path):
        yield from read_part(part, expected_schema, columns).to_pylist()


__all__ = ["ShardResult", "StageDir", "StageConfigChanged", "SchemaError", "UpstreamNotReady", "fingerprint",
           "iter_stage_rows", "list_parts", "read_part", "require_complete", "write_json_atomic",
           "write_table_atomic"]

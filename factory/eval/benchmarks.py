"""Benchmark loading for `factory eval`: a local JSONL/JSON/Parquet file or a Hub dataset id, read through
`datasets.load_dataset`, with its columns mapped onto {id, problem, answer} (code benchmarks: {id, problem, tests},
see factory.eval.code)."""
from __future__ import annotations

from pathlib import Path

from factory.eval.config import BenchmarkConfig, resolve_local

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class BenchmarkError(ValueError):
    """A benchmark cannot be read or lacks what evaluation needs."""


def load_benchmark(config: BenchmarkConfig, limit: int | None = None, base_dir: Path | None = None) -> list[dict]:
    """Rows {id, problem, answer, benchmark, domain} of one benchmark, in file order, the first `limit` only.

    Every row must have a problem and a reference answer: a missing column, or an empty cell, is an error that
    names the file (or Hub id), the column and the row.
    """
    import datasets

    limit = config.limit if config.limit is not None else limit
    if config.source is not None:
        from factory.generate.sources import load_source

        rows = [{"id": p["prompt_id"], "problem": p["problem"], "answer": p["answer"], "benchmark": config.name,
                 "domain": p["domain"]} for p in load_source(config.source)]
        return rows[:limit] if limit else rows
    local = resolve_local(config.path, base_dir)
    suffix = Path(config.path).suffix.lower()
    if local is None and suffix in LOCAL_BUILDERS:
        raise BenchmarkError(f"benchmark '{config.name}': file {config.path} does not exist"
                             + (f" (looked in {base_dir})" if base_dir else ""))
    where = str(local) if local is not None else f"Hub dataset '{config.path}'"
    try:
        if local is not None and local.is_file():
            if local.suffix.lower() not in LOCAL_BUILDERS:
                raise BenchmarkError(f"benchmark '{config.name}': {local} is not a .jsonl, .json or .parquet file")
            if local.stat().st_size == 0:
                raise BenchmarkError(f"benchmark '{config.name}': {local} is empty")
            ds = datasets.load_dataset(LOCAL_BUILDERS[local.suffix.lower()], data_files=str(local), split="train")
        else:  # a Hub id, or a local dataset folder: datasets resolves both
            ds = datasets.load_dataset(str(local or config.path), name=config.subset, split=config.split)
    except BenchmarkError:
        raise
    except Exception as exc:  # datasets raises many kinds (DatasetNotFoundError, DatasetGenerationError, …)
        cause = exc.__cause__ or exc
        raise BenchmarkError(f"benchmark '{config.name}': cannot read {where}: {type(cause).__name__}: {cause}") from exc

    if config.format != "qa":
        return _code_rows(ds, config, where, limit)
    wanted = {"problem": config.problem_column, "answer": config.answer_column}
    if config.id_column is not None:
        wanted["id"] = config.id_column
    for role, column in wanted.items():
        if column not in ds.column_names:
            raise BenchmarkError(f"benchmark '{config.name}': {where} has no {role} column '{column}' "
                                 f"(columns: {', '.join(ds.column_names)}); map it with {role}_column")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if len(ds) == 0:
        raise BenchmarkError(f"benchmark '{config.name}': {where} has no rows")

    ds = ds.select_columns(list(dict.fromkeys(wanted.values())))
    rows, seen = [], set()
    for i, raw in enumerate(ds):
        row_id = str(raw[config.id_column]) if config.id_column is not None else f"{config.name}-{i}"
        for role in ("problem", "answer"):
            value = raw[wanted[role]]
            if value is None or not str(value).strip():
                raise BenchmarkError(f"benchmark '{config.name}': {where} row {i} (id {row_id}): "
                                     f"{role} column '{wanted[role]}' is empty")
        if row_id in seen:
            raise BenchmarkError(f"benchmark '{config.name}': {where} row {i}: id '{row_id}' appears twice")
        seen.add(row_id)
        rows.append({"id": row_id, "problem": str(raw[wanted["problem"]]), "answer": str(raw[wanted["answer"]]),
                     "benchmark": config.name, "domain": config.domain})
    return rows


def _code_rows(ds, config: BenchmarkConfig, where: str, limit: int | None) -> list[dict]:
    """Rows {id, problem, answer: None, tests, ...} of a code benchmark; a missing field names the row."""
    from factory.eval.code import code_fields, code_row

    required, optional = code_fields(config.format, config.problem_column, config.tests_column)
    need_id = config.format == "code" and config.id_column is not None
    required = (*required, config.id_column) if need_id else required
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise BenchmarkError(f"benchmark '{config.name}': {where} has no column(s) {', '.join(missing)} "
                             f"(format {config.format} needs {', '.join(required)}; columns: "
                             f"{', '.join(ds.column_names)})")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if len(ds) == 0:
        raise BenchmarkError(f"benchmark '{config.name}': {where} has no rows")
    ds = ds.select_columns([c for c in dict.fromkeys((*required, *optional)) if c in ds.column_names])
    rows, seen = [], set()
    for i, raw in enumerate(ds):
        empty = [c for c in required if raw[c] is None or (isinstance(raw[c], str) and not raw[c].strip())]
        if empty:
            raise BenchmarkError(f"benchmark '{config.name}': {where} row {i}: field(s) {', '.join(empty)} "
                                 f"missing or empty (format {config.format} needs {', '.join(required)})")
        try:
            row_id, problem, tests = code_row(config.format, raw, problem_column=config.problem_column,
                                              tests_column=config.tests_column, timeout_s=config.timeout_s)
        except Exception as exc:  # noqa: BLE001 - every unreadable test shape is named with its row
            raise BenchmarkError(f"benchmark '{config.name}': {where} row {i}: unusable tests: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if config.format == "code":
            row_id = str(raw[config.id_column]) if need_id else f"{config.name}-{i}"
        if row_id in seen:
            raise BenchmarkError(f"benchmark '{config.name}': {where} row {i}: id '{row_id}' appears twice")
        seen.add(row_id)
        rows.append({"id": row_id, "problem": problem, "answer": None, "tests": tests, "benchmark": config.name,
                     "domain": "code"})
    return rows

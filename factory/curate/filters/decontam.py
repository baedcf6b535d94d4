"""Decontamination: drop prompts that share a word n-gram (default 8, as open-r1's scripts/decontaminate.py) with
a benchmark problem, and say which benchmark (and which problem) each removed prompt matched.

Benchmarks come from local JSONL/Parquet files (or folders/globs of them, one benchmark per file) or Hub dataset
ids through `datasets.load_dataset`. The index holds 64-bit hashes of the benchmark n-grams, not their text; it is
built once per process and only read afterwards. Text is normalized as open-r1 does (lowercase, whitespace
collapsed) and, further, cut into `\\w+` words so that punctuation and LaTeX spacing do not hide a copy
("$x^2$," and "$x^2$ ," give the same words). A benchmark problem shorter than n words is matched by its whole
normalized text instead.
"""
from __future__ import annotations

import glob
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from factory.core.jsonl import iter_jsonl
from factory.curate.config import BenchmarkSpec, DecontamConfig  # noqa: F401
from factory.curate.filters.base import FilterOutcome, RecordFilter

WORD_RE = re.compile(r"\w+")
PROBLEM_COLUMNS = ("problem", "question", "prompt", "Problem", "Question")
ID_COLUMNS = ("id", "task_id", "problem_id", "unique_id", "question_id")


class DecontamError(ValueError):
    """A benchmark source is missing or unusable."""


def words_of(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(words: list[str], n: int) -> list[int]:
    return [_h64(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)]


@dataclass
class BenchmarkProblems:
    name: str
    ids: list[str]
    problems: list[str]
    match: str = "ngram"     # exact: only the whole normalized problem is indexed


def _read_local(path: Path, column: str | None, name: str) -> BenchmarkProblems:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows_cols = table.column_names
        col = column or next((c for c in PROBLEM_COLUMNS if c in rows_cols), None)
        if col is None or col not in rows_cols:
            raise DecontamError(f"{path}: no problem column ({column or ' / '.join(PROBLEM_COLUMNS)}); "
                                f"its columns are {rows_cols}")
        idc = next((c for c in ID_COLUMNS if c in rows_cols), None)
        problems = [str(p) for p in table.column(col).to_pylist()]
        ids = [str(i) for i in table.column(idc).to_pylist()] if idc else [f"{name}-{i}" for i in range(len(problems))]
        return BenchmarkProblems(name, ids, problems)
    if path.suffix not in (".jsonl", ".json"):
        raise DecontamError(f"{path}: unsupported benchmark file type (expected .jsonl, .json or .parquet)")
    ids, problems = [], []
    for lineno, row in iter_jsonl(path, DecontamError):
        col = column or next((c for c in PROBLEM_COLUMNS if c in row), None)
        if col is None or col not in row:
            raise DecontamError(f"{path}:{lineno}: no problem column ({column or ' / '.join(PROBLEM_COLUMNS)}); "
                                f"the record has {sorted(row)}")
        problems.append(str(row[col]))
        idc = next((c for c in ID_COLUMNS if c in row), None)
        ids.append(str(row[idc]) if idc else f"{name}-{lineno}")
    return BenchmarkProblems(name, ids, problems)


def _read_hub(spec: BenchmarkSpec) -> BenchmarkProblems:
    import datasets

    name = spec.name or spec.dataset
    try:
        ds = datasets.load_dataset(spec.dataset, spec.subset, split=spec.split)
    except Exception as exc:  # datasets raises many types; say which benchmark failed
        raise DecontamError(f"benchmark {name}: cannot load Hub dataset {spec.dataset!r} "
                            f"(subset={spec.subset}, split={spec.split}): {exc}") from exc
    col = spec.column or next((c for c in PROBLEM_COLUMNS if c in ds.column_names), None)
    if col is None or col not in ds.column_names:
        raise DecontamError(f"benchmark {name}: dataset {spec.dataset!r} has no problem column "
                            f"({spec.column or ' / '.join(PROBLEM_COLUMNS)}); its columns are {ds.column_names}")
    idc = next((c for c in ID_COLUMNS if c in ds.column_names), None)
    problems = [str(p) for p in ds[col]]
    ids = [str(i) for i in ds[idc]] if idc else [f"{name}-{i}" for i in range(len(problems))]
    return BenchmarkProblems(name, ids, problems)


def _read_source(spec: BenchmarkSpec) -> BenchmarkProblems:
    """A prompt source as a benchmark (e.g. an eval block's built-in held-out split)."""
    from factory.generate.sources import SourceError, load_source

    try:
        rows = load_source(spec.source)
    except SourceError as exc:
        raise DecontamError(f"benchmark {spec.name or spec.source.kind}: {exc}") from exc
    name = spec.name or (rows[0]["source"] if rows else spec.source.kind)
    return BenchmarkProblems(name, [r["prompt_id"] for r in rows], [r["problem"] for r in rows], spec.match or "exact")


def load_benchmarks(specs: list[BenchmarkSpec]) -> list[BenchmarkProblems]:
    """Read every benchmark's problems; a folder or glob gives one benchmark per .jsonl/.parquet file."""
    out: list[BenchmarkProblems] = []
    for spec in specs:
        if spec.source is not None:
            out.append(_read_source(spec))
            continue
        if spec.dataset is not None:
            out.append(_read_hub(spec))
            out[-1].match = spec.match or "ngram"
            continue
        path = Path(spec.path).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
        elif any(ch in spec.path for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(str(path)))
        else:
            files = [path]
        if not files:
            raise DecontamError(f"benchmark path {spec.path!r} matches no .jsonl/.parquet file")
        for f in files:
            if not f.is_file():
                raise DecontamError(f"benchmark file {f} does not exist")
            name = spec.name if (spec.name and len(files) == 1) else f.stem
            out.append(_read_local(f, spec.column, name))
            out[-1].match = spec.match or "ngram"
    names = [b.name for b in out]
    if len(set(names)) != len(names):
        raise DecontamError(f"benchmark names must be unique, got {names}; set `name` on each")
    return out


class NgramIndex:
    """64-bit n-gram hash -> (benchmark, problem id) of its first occurrence; read-only once built."""

    def __init__(self, benchmarks: list[BenchmarkProblems], n: int):
        self.n = n
        self.names = [b.name for b in benchmarks]
        self.sizes = {b.name: len(b.problems) for b in benchmarks}
        self._refs: list[tuple[int, str]] = []
        self._grams: dict[int, int] = {}
        for bi, bench in enumerate(benchmarks):
            for pid, problem in zip(bench.ids, bench.problems):
                ref = len(self._refs)
                self._refs.append((bi, pid))
                words = words_of(problem)
                whole = [_h64(" ".join(words))] if words else []
                keys = ngram_hashes(words, n) if len(words) >= n and bench.match == "ngram" else whole
                for k in keys:
                    self._grams.setdefault(k, ref)

    def __len__(self) -> int:
        return len(self._grams)

    def match(self, text: str) -> tuple[str, str] | None:
        """(benchmark name, problem id) sharing the most n-grams with `text` (ties: the earlier problem), or None.

        Counting matters: boilerplate such as "express your answer as a common fraction" is shared by many problems;
        the problem a prompt was copied from shares many more n-grams than that."""
        words = words_of(text)
        keys = ngram_hashes(words, self.n) if len(words) >= self.n else []
        if words:
            keys.append(_h64(" ".join(words)))  # a prompt equal to a short benchmark problem
        refs = Counter(ref for ref in map(self._grams.get, keys) if ref is not None)
        if not refs:
            return None
        best = min(refs, key=lambda ref: (-refs[ref], ref))
        bi, pid = self._refs[best]
        return self.names[bi], pid


_INDEXES: dict[str, NgramIndex] = {}


def build_index(config: DecontamConfig) -> NgramIndex:
    """The benchmark index for this config, built once per process (workers build their own, then only read);
    keyed by the config's repr (its values), as a worker gets a fresh copy of the config per shard."""
    key = repr(config)
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[key] = NgramIndex(load_benchmarks(config.benchmarks), config.ngram)
    return _INDEXES[key]


class DecontamFilter(RecordFilter):
    """Drops every sample of a prompt that overlaps a benchmark; reason `benchmark:<name>`, metric `matched`."""

    name = "decontam"
    requires = ("problem",)

    def __init__(self, config: DecontamConfig):
        self.config = config
        self.index = build_index(config)
        self._last: tuple[str, tuple[str, str] | None] | None = None

    def start_shard(self) -> None:
        self._last = None

    def check(self, record: dict) -> FilterOutcome:
        problem = record["problem"] or ""
        if self._last is not None and self._last[0] == problem:  # the k samples of a prompt are adjacent
            hit = self._last[1]
        else:
            hit = self.index.match(problem)
            self._last = (problem, hit)
        if hit is None:
            return True, None, {}
        return False, f"benchmark:{hit[0]}", {"matched": hit[1]}

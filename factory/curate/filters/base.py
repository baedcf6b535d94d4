"""The shape every curation filter shares, and the driver that runs a chain of them over one shard's records.

As in datatrove's `BaseFilter`, a filter writes only `check(record) -> (keep, reason, metrics)`; the driver
(`FilterChain`) checks the fields the filters need, merges each filter's metrics (its scores) into the record,
counts kept/dropped per filter and per (source, domain), times every filter, and routes each dropped record with
the filter's name and reason into the rejected list. A dropped record goes through no later filter.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

FilterOutcome = tuple[bool, str | None, dict[str, Any]]


class MissingFieldError(ValueError):
    """A record lacks a field a filter needs (a ValueError, so the CLI prints it as a user error)."""


class RecordFilter(ABC):
    """One curation filter over one record. Subclasses set `name` and `requires` and write `check`."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    def skip_reason(self, fields: set[str]) -> str | None:
        """Why this filter does not apply to records with these fields (None: it applies)."""
        return None

    def start_shard(self) -> None:
        """Reset any per-shard cache (called by the driver before each shard)."""

    @abstractmethod
    def check(self, record: dict) -> FilterOutcome:
        """Keep or drop one record: (keep, reason when dropped, scores to store on the record)."""


@dataclass
class FilterStats:
    """What one filter did: records in, dropped per reason, seconds spent."""

    records_in: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def records_out(self) -> int:
        return self.records_in - sum(self.dropped.values())


@dataclass
class ChainStats:
    """Per-filter stats plus dropped counts per (filter, source, domain) and inputs per (source, domain)."""

    filters: dict[str, FilterStats] = field(default_factory=dict)
    records_in: int = 0
    groups_in: Counter = field(default_factory=Counter)       # (source, domain) -> records in
    groups_dropped: Counter = field(default_factory=Counter)  # (filter, source, domain) -> records dropped

    def merge(self, other: ChainStats) -> None:
        self.records_in += other.records_in
        self.groups_in.update(other.groups_in)
        self.groups_dropped.update(other.groups_dropped)
        for name, st in other.filters.items():
            mine = self.filters.setdefault(name, FilterStats())
            mine.records_in += st.records_in
            mine.dropped.update(st.dropped)
            mine.seconds += st.seconds
            mine.skipped = mine.skipped or st.skipped

    def to_json(self) -> dict:
        return {
            "records_in": self.records_in,
            "filters": {n: {"in": s.records_in, "out": s.records_out, "dropped": dict(s.dropped),
                            "seconds": round(s.seconds, 4), "skipped": s.skipped} for n, s in self.filters.items()},
        }


@dataclass
class ChainResult:
    kept: list[dict]
    rejected: list[dict]
    stats: ChainStats


def check_fields(filters: Iterable[RecordFilter], fields: set[str], where: str = "input") -> None:
    """Raise MissingFieldError naming the first field a (non-skipped) filter needs that the records lack."""
    for f in filters:
        if f.skip_reason(fields) is not None:
            continue
        for name in f.requires:
            if name not in fields:
                raise MissingFieldError(f"{where}: filter '{f.name}' needs the field '{name}', which the records "
                                        f"lack (they have: {', '.join(sorted(fields))})")


class FilterChain:
    """Runs filters in order over the records of one shard; see the module docstring."""

    def __init__(self, filters: list[RecordFilter]):
        names = [f.name for f in filters]
        if len(set(names)) != len(names):
            raise ValueError(f"filter names must be unique: {names}")
        self.filters = filters

    def run(self, records: list[dict], where: str = "input") -> ChainResult:
        stats = ChainStats(filters={f.name: FilterStats() for f in self.filters})
        if not records:
            return ChainResult([], [], stats)
        fields = set(records[0])  # a shard's records share one schema
        check_fields(self.filters, fields, where)
        active = []
        for f in self.filters:
            reason = f.skip_reason(fields)
            stats.filters[f.name].skipped = reason
            if reason is None:
                f.start_shard()
                active.append((f, stats.filters[f.name]))

        kept: list[dict] = []
        rejected: list[dict] = []
        clock = time.perf_counter
        stats.records_in = len(records)
        for rec in records:
            group = (rec.get("source"), rec.get("domain"))
            stats.groups_in[group] += 1
            for f, st in active:
                st.records_in += 1
                t0 = clock()
                keep, reason, metrics = f.check(rec)
                st.seconds += clock() - t0
                if metrics:
                    rec.update(metrics)
                if not keep:
                    reason = reason or "dropped"
                    st.dropped[reason] += 1
                    stats.groups_dropped[(f.name, *group)] += 1
                    rec["filter"] = f.name
                    rec["reason"] = reason
                    rejected.append(rec)
                    break
            else:
                kept.append(rec)
        return ChainResult(kept, rejected, stats)

"""One part of the report page, and the column readers the sections share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markupsafe import Markup

from factory.report import plots


@dataclass
class Section:
    """One part of the page: `status` is 'ok', 'not run' or 'empty'; `notes` say what was skipped and why;
    `data` holds what the section's own template block renders (tables, sample groups)."""

    id: str
    title: str
    status: str = "not run"
    source: str = ""
    plot: Markup | None = None
    stats: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: object = None


# --- reading -------------------------------------------------------------------------------------------------

def parquet_files(stage_dir: Path) -> list[Path]:
    return sorted(p for p in stage_dir.glob("*.parquet") if not p.name.startswith("."))


def read_column(stage_dir: Path, column: str, notes: list[str], per: str | None = None) -> np.ndarray | None:
    """Values of `column` over the stage's Parquet files, reading only that column (and `per`, when given and
    present: one value per distinct `per`, the first seen). None when no file has the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunks, seen, files_with = [], set(), 0
    for path in parquet_files(stage_dir):
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # a torn or foreign file must not sink the whole report
            notes.append(f"{path.name}: unreadable Parquet ({exc})")
            continue
        if column not in names:
            notes.append(f"{path.name}: no '{column}' column")
            continue
        files_with += 1
        group = per if per is not None and per in names else None
        table = pq.read_table(path, columns=[column] + ([group] if group else []))
        values = table.column(column).cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
        if group:
            keys = table.column(group).to_pylist()
            first = np.fromiter((key not in seen and not seen.add(key) for key in keys), dtype=bool, count=len(keys))
            values = values[first]
        chunks.append(values)
    if not files_with:
        return None
    return np.concatenate(chunks)


def describe(values: np.ndarray) -> dict[str, str]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n": "0"}
    return {"n": f"{finite.size:,}", "mean": plots.fmt(float(finite.mean())),
            "median": plots.fmt(float(np.median(finite))), "p90": plots.fmt(float(np.percentile(finite, 90))),
            "min": plots.fmt(float(finite.min())), "max": plots.fmt(float(finite.max()))}

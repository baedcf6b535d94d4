"""The R1 paper's distilled-model table (DeepSeek-R1, Table 5): one row per model, the columns AIME 2024 pass@1 and
cons@k (the paper: cons@64), MATH-500 pass@1, GPQA Diamond pass@1 and LiveCodeBench pass@1, in percent.

A benchmark fills a column by its `table_column`, else by its name (aime* → AIME 2024, math500/math-500 →
MATH-500, gpqa* → GPQA Diamond, livecodebench/lcb/humaneval/apps or any code benchmark → the code column, headed
with the benchmark's own name when it is not LiveCodeBench). Benchmarks that fill no column, or a column already
filled, follow as `<name> pass@1`. Written as `eval/r1_table.json` and `eval/r1_table.md`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from factory.core.shards import write_text_atomic

TABLE_JSON, TABLE_MD = "r1_table.json", "r1_table.md"
COLUMNS = {"aime24": ("AIME 2024", ("pass@1", "cons@k")), "math500": ("MATH-500", ("pass@1",)),
           "gpqa": ("GPQA Diamond", ("pass@1",)), "code": ("LiveCodeBench", ("pass@1",))}
_GUESS = [("aime24", re.compile(r"aime")), ("math500", re.compile(r"math[-_]?500")), ("gpqa", re.compile(r"gpqa")),
          ("code", re.compile(r"livecodebench|lcb|humaneval|apps|mbpp"))]


def column_of(name: str, domain: str = "math", explicit: str | None = None) -> str | None:
    """The R1 column a benchmark fills, or None."""
    if explicit is not None:
        return None if explicit == "none" else explicit
    for column, pattern in _GUESS:
        if pattern.search(name.lower()):
            return column
    return "code" if domain == "code" else None


def r1_table(summary: list[dict], benchmarks: list[dict]) -> dict:
    """{columns: [{header, benchmark, metric}], rows: [{model, values: [percent or None]}]} from summary rows and
    [{name, domain, table_column}] of the configured benchmarks."""
    filled: dict[str, str] = {}
    extra: list[str] = []
    for b in benchmarks:
        column = column_of(b["name"], b.get("domain", "math"), b.get("table_column"))
        if column is not None and column not in filled:
            filled[column] = b["name"]
        else:
            extra.append(b["name"])
    by_key = {(r["model"], r["benchmark"]): r for r in summary}
    ks = {r["benchmark"]: r.get("k") for r in summary}
    columns = []
    for column, (title, metrics) in COLUMNS.items():
        bench = filled.get(column)
        if column == "code" and bench is not None and not re.search(r"livecodebench|lcb", bench.lower()):
            title = bench
        for metric in metrics:
            shown = f"cons@{ks.get(bench) or 64}" if metric == "cons@k" else metric
            columns.append({"header": f"{title} {shown}", "benchmark": bench, "metric": metric})
    columns += [{"header": f"{name} pass@1", "benchmark": name, "metric": "pass@1"} for name in extra]
    rows = []
    for model in dict.fromkeys(r["model"] for r in summary):
        values = []
        for c in columns:
            r = by_key.get((model, c["benchmark"]))
            value = None if r is None else r.get(c["metric"])
            values.append(None if value is None else round(100 * value, 1))
        rows.append({"model": model, "values": values})
    return {"layout": "r1", "columns": columns, "rows": rows}


def markdown(table: dict) -> str:
    head = ["Model", *(c["header"] for c in table["columns"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(table["columns"])) + "|"]
    for row in table["rows"]:
        cells = ["—" if v is None else f"{v:.1f}" for v in row["values"]]
        lines.append("| " + " | ".join([row["model"], *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_r1_table(table: dict, eval_dir: Path) -> None:
    """`r1_table.json` and `r1_table.md` in `eval_dir`, each written atomically."""
    write_text_atomic(Path(eval_dir) / TABLE_JSON, json.dumps(table, indent=2) + "\n")
    write_text_atomic(Path(eval_dir) / TABLE_MD, markdown(table))


def print_r1_table(table: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="R1 distilled-model table (%)", show_lines=False)
    out.add_column("Model", style="bold")
    for c in table["columns"]:
        out.add_column(c["header"], justify="right")
    for row in table["rows"]:
        out.add_row(row["model"], *("—" if v is None else f"{v:.1f}" for v in row["values"]))
    (console or Console()).print(out)

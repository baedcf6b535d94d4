"""`factory show DIR [--stage S] [--filter F] [--wrong]`: the run's data in the terminal, as rich tables.

Without options: the funnel (rejection counted where it happens) and each stage's reasons with their counts.
`--stage S`: a few example records per reason of stage S; `--filter F`: only the groups of filter F (curate's
filters, verify's "rejection sampling", "kept", generate's "finish_reason"; of every stage unless `--stage`);
`--wrong`: eval's wrong answers beside the reference, and a per-prompt pass-rate table.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from factory.report import browser
from factory.report.funnel import funnel_rows

TEXT_CHARS = 360


class ShowError(ValueError):
    """The run folder or the options name nothing to show."""


def funnel_table(run_dir: Path) -> Table:
    notes: list[str] = []
    table = Table(title="Funnel: kept and dropped per stage (rejection counted where it happens)", title_justify="left")
    for name, justify in (("stage", "left"), ("in", "right"), ("out", "right"), ("kept", "right"),
                          ("dropped by reason", "left")):
        table.add_column(name, justify=justify)
    for row in funnel_rows(run_dir, notes):
        share = row["kept_share"]
        kept = "—" if share is None else (f"×{share:.2f}" if share > 1 else f"{100 * share:.1f}%")
        reasons = "\n".join(f"{r}: {n:,}" for r, n in row["dropped"].items()) or "none"
        table.add_row(row["stage"], f"{row['records_in']:,}", f"{row['records_out']:,}", kept, reasons)
    if notes:
        table.caption = "; ".join(notes)
    return table


def reasons_table(stage: str, groups: list[browser.Group]) -> Table:
    table = Table(title=f"{stage}: samples by reason", title_justify="left")
    for name, justify in (("filter", "left"), ("reason", "left"), ("samples", "right")):
        table.add_column(name, justify=justify)
    for g in groups:
        table.add_row(g.filter, g.reason, f"{g.count:,}")
    return table


def examples_table(group: browser.Group) -> Table:
    """One group's examples: the sample, its verdicts and scores, answer vs reference, and the reply's text."""
    title = f"{group.stage} · {group.filter} · {group.reason}  ({len(group.examples)} of {group.count:,})"
    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("sample", no_wrap=True)
    table.add_column("reason / scores", ratio=2)
    table.add_column("answer vs reference", ratio=1)
    table.add_column("text", ratio=4)
    for row in group.examples:
        scores = [f"{group.filter}: {row['reason']}"] if row.get("reason") else []
        scores += [f"{k}: {v}" for k, v in browser.details(row)]
        answer = f"{row.get('extracted_answer') or '—'}\nref: {row.get('answer') or '—'}"
        table.add_row(f"{row.get('prompt_id')}#{row.get('sample_idx')}", "\n".join(scores), answer,
                      browser.excerpt(browser.reply(row), TEXT_CHARS * 2 // 3, TEXT_CHARS // 3))
    return table


def wrong_table(group: browser.Group) -> Table:
    table = Table(title=f"eval · {group.filter} · {group.reason}  ({len(group.examples)} of {group.count:,} wrong)",
                  title_justify="left", show_lines=True)
    for name, ratio in (("problem", 3), ("reference", 1), ("answer", 1), ("why", 2), ("reply", 4)):
        table.add_column(name, ratio=ratio)
    for row in group.examples:
        table.add_row(f"{row.get('prompt_id')}#{row.get('sample_idx')}\n{browser.excerpt(row.get('problem'), 160, 40)}",
                      str(row.get("answer") or "—"), str(row.get("extracted_answer") or "—"),
                      str(row.get("accuracy_reason") or row.get("accuracy_verdict") or ""),
                      browser.excerpt(browser.reply(row), TEXT_CHARS * 2 // 3, TEXT_CHARS // 3))
    return table


def pass_rate_table(bench: dict) -> Table:
    more = f" (hardest {len(bench['rows'])}; {bench['more']:,} more)" if bench["more"] else ""
    table = Table(title=f"eval · {bench['benchmark']}: correct samples per prompt{more}", title_justify="left")
    table.add_column("prompt")
    table.add_column("reference")
    for model in bench["models"]:
        table.add_column(model, justify="right")
    for row in bench["rows"]:
        cells = [f"{c}/{k}" if (c, k) != (None, None) else "—"
                 for c, k in (row["cells"].get(m, (None, None)) for m in bench["models"])]
        table.add_row(row["prompt_id"], str(row["reference"] or "—"), *cells)
    return table


def show(run_dir: Path, stage: str | None = None, filter_: str | None = None, wrong: bool = False, n: int = 3,
         console: Console | None = None, limit: int = 30) -> None:
    """Print the run's funnel, a stage's reasons and examples, or eval's wrong answers (see the module doc)."""
    run_dir = Path(run_dir)
    console = console or Console()
    if not run_dir.is_dir():
        raise ShowError(f"run folder {run_dir} does not exist")
    if wrong:
        return show_wrong(run_dir, n, console, limit)
    if stage is None and filter_ is None:
        if not any(run_dir.glob("*/counts.json")):
            raise ShowError(f"{run_dir}: no stage has written a counts.json yet (nothing run?)")
        console.print(funnel_table(run_dir))
        for name in browser.STAGES:
            groups = browser.stage_groups(run_dir, name, n=0)
            if groups:
                console.print(reasons_table(name, groups))
        console.print("examples: factory show DIR --stage verify | --stage curate --filter language | --wrong")
        return None
    if stage is not None and stage not in browser.STAGES:
        raise ShowError(f"--stage {stage}: one of {', '.join(browser.STAGES)} (eval: --wrong)")
    stages = [stage] if stage is not None else list(browser.STAGES)
    groups = [g for name in stages for g in browser.stage_groups(run_dir, name, n=n)]
    if not groups:
        raise ShowError(f"{run_dir / stages[0]}: no records (stage not run?)")
    if filter_ is not None:
        names = sorted({g.filter for g in groups})
        wanted = filter_.replace("-", " ").replace("_", " ").lower()
        groups = [g for g in groups if g.filter.replace("_", " ").lower() == wanted]
        if not groups:
            where = f"{stage} " if stage else ""
            raise ShowError(f"--filter {filter_}: no {where}samples; filters with samples: {', '.join(names)}")
    for group in groups:
        console.print(examples_table(group))
    prompts = browser.verify_prompts(run_dir, limit=limit) if stage == "verify" and filter_ is None else None
    if prompts:
        console.print(verify_prompts_table(prompts))
    return None


def verify_prompts_table(prompts: dict) -> Table:
    more = f" (hardest {len(prompts['rows'])} of {prompts['prompts']:,})" if prompts["more"] else ""
    table = Table(title=f"verify: correct and selected samples per prompt{more}", title_justify="left")
    for name, justify in (("prompt", "left"), ("reference", "left"), ("majority", "left"), ("correct", "right"),
                          ("selected", "right"), ("pass rate", "right")):
        table.add_column(name, justify=justify)
    for p in prompts["rows"]:
        table.add_row(p["prompt_id"], str(p["reference"] or "—"), str(p["majority"] or "—"), f"{p['correct']}/{p['k']}",
                      f"{p['selected']}/{p['k']}", "—" if p["pass_rate"] is None else f"{p['pass_rate']:.2f}")
    return table


def show_wrong(run_dir: Path, n: int, console: Console, limit: int) -> None:
    """eval's wrong answers per model, benchmark and verdict, then the per-prompt pass-rate tables."""
    groups = browser.wrong_answers(run_dir, n=n)
    tables = browser.prompt_pass_rates(run_dir, limit=limit)
    if not tables:
        raise ShowError(f"{run_dir / 'eval'}: no eval samples (eval not run?)")
    for group in groups:
        console.print(wrong_table(group))
    if not groups:
        console.print("eval: no wrong answers")
    for bench in tables:
        console.print(pass_rate_table(bench))

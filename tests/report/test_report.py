"""The run report: built from a fake-but-real run folder (real Parquet shards, counts.json files, a training log,
an eval summary from `summarize`), checked as HTML text and as the DOM headless Chromium renders."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.report import plots
from factory.eval.metrics import summarize, write_summary
from factory.report.html import render_report, write_report
from factory.core.schema import load_schema

K = 4
SECTIONS = ["funnel", "trace-length", "pass-rate", "lang-consistency", "samples", "loss", "eval", "wrong-answers",
            "prompt-pass-rates"]
PLOTTED = ["funnel", "trace-length", "pass-rate", "lang-consistency", "loss", "eval"]


def trace_rows(prompt_ids: list[str], rng: random.Random) -> list[dict]:
    rows = []
    for pid in prompt_ids:
        for i in range(K):
            tokens = int(rng.lognormvariate(5.0, 0.5))
            rows.append({"prompt_id": pid, "source": "arith", "domain": "math", "problem": f"What is {pid}?",
                         "answer": "7", "tests": None, "language": "en", "metadata": "{}", "sample_idx": i,
                         "teacher": "smollm2-135m", "sampling": json.dumps({"n": K, "temperature": 0.6}),
                         "template": "chat", "prompt_text": f"What is {pid}?", "completion": "<think>\n...</think> 7",
                         "reasoning": "...", "answer_text": "7", "think_closed": True,
                         "finish_reason": "length" if tokens > 400 else "stop", "prompt_tokens": 20,
                         "completion_tokens": tokens, "latency_s": 0.1, "error": None})
    return rows


def make_run(root: Path) -> Path:
    """A run folder with every stage's outputs the report reads."""
    rng = random.Random(7)
    run = root / "run"
    trace = load_schema("trace")
    shards = [[f"p{i}" for i in range(0, 30)], [f"p{i}" for i in range(30, 50)]]
    for stage in ("generate", "verify", "curate", "sft", "eval"):
        (run / stage).mkdir(parents=True)
    kept_after_verify = 0
    for n, prompt_ids in enumerate(shards):
        rows = trace_rows(prompt_ids, rng)
        pq.write_table(trace.table(rows), run / "generate" / f"part-{n:05d}.parquet")
        for pid in prompt_ids:  # a per-prompt pass rate repeated over its k samples
            correct = [rng.random() < 0.4 for _ in range(K)]
            for row in rows:
                if row["prompt_id"] == pid:
                    row["reward_accuracy"] = float(correct[row["sample_idx"]])
                    row["pass_rate"] = sum(correct) / K
        pq.write_table(pa.Table.from_pylist(rows), run / "verify" / f"part-{n:05d}.parquet")
        kept = [dict(r, lang_consistency=min(1.0, rng.betavariate(8, 1.2))) for r in rows if r["reward_accuracy"] >= 1]
        kept_after_verify += len(kept)
        pq.write_table(pa.Table.from_pylist(kept), run / "curate" / f"part-{n:05d}.parquet")
    n_traces = sum(len(s) for s in shards) * K
    counts = {
        "generate": {"records_in": 50, "records_out": n_traces, "dropped": {}, "extra": {"tokens_per_s": 131.2}},
        "verify": {"records_in": n_traces, "records_out": n_traces, "dropped": {}, "extra": {"correct": kept_after_verify}},
        "curate": {"records_in": n_traces, "records_out": kept_after_verify - 9,
                   "dropped": {"incorrect": n_traces - kept_after_verify, "lang_mixed": 6, "duplicate": 3}, "extra": {}},
        "sft": {"records_in": kept_after_verify - 9, "records_out": kept_after_verify - 9, "dropped": {},
                "extra": {"steps": 60, "epochs": 2}},
    }
    for stage, c in counts.items():
        (run / stage / "counts.json").write_text(json.dumps({"stage": stage, **c}))
    (run / "curate" / "funnel.json").write_text(json.dumps([
        {"step": "select_correct", "in": n_traces, "kept": kept_after_verify, "dropped": n_traces - kept_after_verify},
        {"step": "lang_consistency", "in": kept_after_verify, "kept": kept_after_verify - 6, "dropped": 6},
        {"step": "dedupe", "in": kept_after_verify - 6, "kept": kept_after_verify - 9, "dropped": 3},
    ]))
    with (run / "sft" / "train_log.jsonl").open("w") as f:
        for step in range(1, 61):
            f.write(json.dumps({"step": step, "loss": 2.5 * math.exp(-step / 25) + 0.4 + 0.05 * rng.random(),
                                "learning_rate": 1e-4}) + "\n")
            if step % 20 == 0:
                f.write(json.dumps({"step": step, "eval_loss": 0.9 + 0.5 * math.exp(-step / 30)}) + "\n")
    verdicts = []
    for model, p_right in (("base", 0.3), ("student", 0.55), ("teacher", 0.8)):
        for benchmark, n_problems in (("arith-heldout", 40), ("gsm8k", 10)):
            for p in range(n_problems):
                for i in range(K):
                    right = rng.random() < p_right
                    verdicts.append({"model": model, "benchmark": benchmark, "prompt_id": f"{benchmark}-{p}",
                                     "sample_idx": i, "reward_accuracy": float(right),
                                     "extracted_answer": "7" if right else rng.choice(["6", "8", None]),
                                     "completion_tokens": rng.randint(50, 300),
                                     "finish_reason": rng.choice(["stop"] * 9 + ["length"])})
    rows = summarize(verdicts)
    write_summary(rows, run / "eval")
    pq.write_table(pa.Table.from_pylist(verdicts), run / "eval" / "part-00000.parquet")
    (run / "eval" / "counts.json").write_text(json.dumps({"stage": "eval", "records_in": len(verdicts),
                                                          "records_out": len(verdicts), "dropped": {}, "extra": {}}))
    return run


class TagCounter(HTMLParser):
    """Counts start tags, and the svg/table elements found inside each <section id=...>."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.by_section: dict[str, dict[str, int]] = {}
        self.section: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "section":
            self.section = dict(attrs).get("id")
            self.by_section[self.section] = {}
        elif self.section is not None:
            counts = self.by_section[self.section]
            counts[tag] = counts.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag == "section":
            self.section = None

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> TagCounter:
    counter = TagCounter()
    counter.feed(html)
    return counter


def test_report_has_every_section_with_plots_and_tables(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.html"
    html = path.read_text()
    dom = parse(html)
    assert list(dom.by_section) == SECTIONS
    for section in PLOTTED:
        assert dom.by_section[section].get("svg") == 1, section
    assert dom.by_section["funnel"]["table"] == 2  # counts per stage, curate/funnel.json steps
    assert dom.by_section["eval"]["table"] == 2  # models × benchmarks grid, all rows
    assert "not run" not in html
    text = " ".join(dom.text)
    for stage in ("generate", "verify", "curate", "sft", "eval"):
        assert stage in text
    assert "incorrect" in text and "lang_mixed" in text and "lang_consistency" in text
    # the pass rate is counted once per prompt (50 prompts), not once per sample (200)
    assert "per prompt_id n 50 mean" in " ".join(text.split())
    # self-contained: no external fetches of any kind
    for banned in ("http://", "https://", "<script", "<link", "src=", "url("):
        assert banned not in html, banned
    assert not [p.name for p in run.iterdir() if p.name.startswith(".report")]  # temp file renamed away


def test_each_section_degrades_to_not_run(tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    dom = parse(write_report(empty).read_text())
    assert list(dom.by_section) == SECTIONS
    assert all("svg" not in tags for tags in dom.by_section.values())
    assert " ".join(dom.text).count("not run") >= 2 * len(SECTIONS)  # badge + sentence per section

    # only generation has run
    partial = make_run(tmp_path / "full")
    for stage in ("verify", "curate", "sft", "eval"):
        shutil.rmtree(partial / stage)
    dom = parse(render_report(partial))
    assert dom.by_section["trace-length"].get("svg") == 1
    assert dom.by_section["funnel"].get("svg") == 1
    for section in ("pass-rate", "lang-consistency", "loss", "eval"):
        assert "svg" not in dom.by_section[section], section


def test_parquet_read_only_needed_columns(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    requested = []
    real_read_table = pq.read_table

    def recording_read_table(source, *args, columns=None, **kwargs):
        requested.append((Path(source).parent.name, tuple(columns) if columns is not None else None))
        return real_read_table(source, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", recording_read_table)
    render_report(run)
    # the plots read their one column; the sample browser names its columns too (never a whole table)
    assert {("curate", ("lang_consistency",)), ("generate", ("completion_tokens",)),
            ("verify", ("pass_rate", "prompt_id"))} <= set(requested)
    assert all(columns is not None for _, columns in requested)
    # text columns are read once per file holding a chosen example, not once per reason
    texts = [(stage, columns) for stage, columns in requested if "completion" in columns or "problem" in columns]
    assert len(texts) <= len(list(run.glob("*/part-*.parquet")) + list(run.glob("*/rejected/part-*.parquet")))


def test_bad_stage_files_are_named_not_fatal(tmp_path):
    run = make_run(tmp_path)
    (run / "sft" / "counts.json").write_text("{not json")
    with (run / "sft" / "train_log.jsonl").open("a") as f:
        f.write('{"step": 61, "loss": \n')
    pq.write_table(pa.table({"prompt_id": ["x"]}), run / "curate" / "part-00009.parquet")
    (run / "eval" / "summary.json").write_text(json.dumps([{"model": "m"}]))
    html = render_report(run)
    text = " ".join(" ".join(parse(html).text).split())
    assert f"{run / 'sft' / 'counts.json'}: unreadable" in text
    assert f"{run / 'sft' / 'train_log.jsonl'} line 64: not JSON" in text
    assert "part-00009.parquet: no 'lang_consistency' column" in text
    assert "expected a list of rows with model, benchmark and a numeric pass@1" in text
    dom = parse(html)
    assert dom.by_section["loss"].get("svg") == 1 and dom.by_section["lang-consistency"].get("svg") == 1


def test_missing_run_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder .*nowhere does not exist"):
        write_report(tmp_path / "nowhere")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_report_in_headless_chromium(tmp_path):
    run = make_run(tmp_path)
    report = write_report(run)
    dom = parse(chromium("--dump-dom", report.as_uri()).stdout)
    assert list(dom.by_section) == SECTIONS
    for section in PLOTTED:
        assert dom.by_section[section].get("svg") == 1, section
    assert dom.by_section["funnel"]["table"] == 2 and dom.by_section["eval"]["table"] == 2
    # the browser built the plots' shapes: histogram bars, funnel segments, the loss lines, eval bars
    assert dom.by_section["trace-length"]["rect"] >= 10
    # the kept share of 5 stages and curate's 3 drop reasons, then a legend key for kept and each reason
    assert dom.by_section["funnel"]["rect"] == 5 + 3 + 4
    assert dom.by_section["loss"]["polyline"] == 2  # loss and eval_loss
    assert dom.by_section["eval"]["rect"] >= 6  # 3 models × 2 benchmarks
    assert dom.by_section["eval"]["tr"] == (1 + 3) + (1 + 6)

    screenshot = Path(os.environ.get("FACTORY_REPORT_SCREENSHOT", tmp_path / "report.png"))
    chromium(f"--screenshot={screenshot}", "--window-size=1200,3600", "--hide-scrollbars", report.as_uri())
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page compresses to a few kB


def test_plot_helpers_on_edge_data():
    assert plots.nice_ticks(0, 1, 5) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plots.nice_ticks(0, 5300, 5) == [0, 2000, 4000]
    assert "no values" in plots.histogram(np.array([np.nan]), "t", "x")
    one_value = plots.histogram(np.array([3.0, 3.0]), "t", "x")
    assert one_value.count('<rect class="bar"') == 1
    # a long training log is thinned so the page stays small
    steps = list(range(20_000))
    svg = plots.line_chart({"loss": (steps, [1 / (s + 1) for s in steps])}, "t", "step", "loss", max_points=1000)
    points = svg.split('points="')[1].split('"')[0].split()
    assert 900 <= len(points) <= 1001 and points[-1].startswith(f"{plots.WIDTH - plots.MARGIN_RIGHT}")
    # labels are escaped, never markup
    assert "<b>" not in plots.stacked_bars([("<b>stage</b>", [("kept", 1, "#000")])], "t")

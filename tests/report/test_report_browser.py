"""The report's data browser over a small real run, checked in the DOM headless Chromium renders: samples per
stage/filter/reason, eval's wrong answers beside the reference, the per-prompt pass-rate table, the curation
tables as tables, the funnel counting rejection at verify, and language consistency as a histogram."""
from __future__ import annotations

import json

import pytest
from _dom import parse_dom
from _real_run import make_real_run
from test_report import CHROMIUM, SECTIONS, chromium

from factory.report.funnel import funnel_rows
from factory.report.html import render_report, write_report


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return make_real_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def dom(real_run):
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return parse_dom(chromium("--dump-dom", write_report(real_run).as_uri()).stdout)


def cells(tr) -> list[str]:
    return [td.text() for td in tr.find_all("td")]


def body_rows(table) -> list[list[str]]:
    return [cells(tr) for tr in table.find_all("tbody")[0].find_all("tr")]


def test_sections_in_order_and_self_contained(dom, real_run):
    assert [s.attrs["id"] for s in dom.find_all("section")] == SECTIONS
    assert all("not run" not in s.find_all("h2")[0].text() for s in dom.find_all("section"))
    html = (real_run / "report.html").read_text()
    for banned in ("http://", "https://", "<script", "<link", "src=", "url("):
        assert banned not in html, banned


def test_funnel_counts_rejection_where_it_happens(dom):
    rows = {r[0].split()[0]: r for r in body_rows(dom.find_all("table", cls="funnel-table")[0])}
    assert rows["verify"][1:5] == ["32", "23", "71.9%", "9"]
    assert rows["verify"][5] == "accuracy wrong: 8 accuracy no_answer: 1"
    assert "rejection sampling" in rows["verify"][0]
    assert rows["curate"][1:5] == ["23", "19", "82.6%", "4"] and "selection" not in rows["curate"][5]
    extra = rows["verify"][6]
    assert "accuracy: correct 23 · no_answer 1 · wrong 8" in extra and "{" not in extra  # no raw JSON


def test_curation_tables_are_tables(dom):
    steps = body_rows(dom.by_id("curate-steps"))
    assert [r[0] for r in steps] == ["selection", "truncation", "language", "readability", "repetition", "decontam",
                                     "dedupe"]
    assert steps[0] == ["selection", "32", "23", "71.9%", "9", "not_selected 9", "", "0"]
    assert steps[2][:6] == ["language", "22", "21", "95.5%", "1", "lang_consistency<0.9 1"]
    assert steps[5][6] == "no benchmarks configured"
    assert body_rows(dom.by_id("curate-by-source"))[0][:4] == ["unit", "32", "19", "59.4%"]
    assert body_rows(dom.by_id("curate-by-domain"))[0][0] == "math"
    for table in dom.find_all("table", cls="curate-funnel"):
        assert "{" not in table.text() and '"' not in table.text()


def test_language_consistency_is_a_histogram(dom):
    section = dom.by_id("lang-consistency")
    svg = section.find_all("svg")[0]
    bars = svg.find_all("rect", cls="bar")
    assert len(bars) >= 3  # kept near 1.0, the mixed-language sample below the cut-off, a later drop
    assert {b.attrs["fill"] for b in bars} == {"#59a14f", "#e15759", "#bab0ac"}
    assert len(svg.find_all("line", cls="threshold")) == 1 and "cut-off 0.9" in svg.text()
    assert [k.text() for k in svg.find_all("text") if k.text().startswith(("kept", "dropped"))] == [
        "kept", "dropped by the language filter", "dropped by a later filter"]
    assert "below cut-off 1" in section.text()


def test_verify_prompts_table_hardest_first(dom):
    rows = body_rows(dom.by_id("pass-rate").find_all("table", cls="verify-prompts")[0])
    assert len(rows) == 8 and rows[0] == ["p1", "66", "66", "2/4", "2/4", "0.50"]
    assert all(r[3] == "3/4" for r in rows[1:])  # one wrong sample in each other prompt


def test_sample_browser_per_stage_filter_and_reason(dom):
    section = dom.by_id("samples")
    assert [d.attrs["data-stage"] for d in section.find_all("div", cls="stage-samples")] == [
        "generate", "verify", "curate"]
    curate = dom.by_id("samples-curate")
    groups = {(g.attrs["data-filter"], g.attrs["data-reason"]): g for g in curate.find_all("details", cls="reason-group")}
    assert set(groups) == {("selection", "not_selected"), ("truncation", "finish_reason=length"),
                           ("language", "lang_consistency<0.9"), ("repetition", "repeated_ngram_ratio>0.3"),
                           ("dedupe", "exact_response"), ("kept", "kept")}
    language = groups[("language", "lang_consistency<0.9")]
    examples = language.find_all("tr", cls="example")
    assert len(examples) == 1 and examples[0].find_all("td")[0].text() == "p3#1"
    assert "lang_consistency:" in language.text() and "所以我们需要计算" in language.text()
    assert groups[("dedupe", "exact_response")].find_all("tr", cls="example")[0].find_all("td")[0].text() == "p5#1"
    verify = {g.attrs["data-reason"]: g for g in dom.by_id("samples-verify").find_all("details", cls="reason-group")}
    assert set(verify) == {"rejected: accuracy wrong", "rejected: accuracy no_answer", "kept: correct (all_correct)"}
    wrong = verify["rejected: accuracy wrong"]
    assert len(wrong.find_all("tr", cls="example")) == 3 and wrong.find_all("span", cls="count")[0].text() == "8"
    for tr in wrong.find_all("tr", cls="example"):
        assert cells(tr)[2] == "65 ref: 66"  # the answer beside the reference
    assert "kept" in verify["kept: correct (all_correct)"].attrs["class"]


def test_wrong_answers_beside_the_reference(dom):
    groups = dom.by_id("wrong-answers").find_all("details", cls="wrong-group")
    assert [(g.attrs["data-group"], g.attrs["data-verdict"]) for g in groups] == [
        ("base · arith", "wrong"), ("student · arith", "wrong")]
    assert [g.find_all("span", cls="count")[0].text() for g in groups] == ["10", "7"]
    for g in groups:
        examples = g.find_all("tr", cls="example")
        assert len(examples) == 3
        for tr in examples:
            answer, reference = tr.find_all("td")[2].text().split(" ref: ")
            assert answer != reference and "math-verify:" in tr.text()


def test_prompt_pass_rate_table(dom):
    table = dom.by_id("prompt-pass-rates").find_all("table", cls="prompt-rates")[0]
    assert table.attrs["data-benchmark"] == "arith"
    assert [th.text() for th in table.find_all("th")] == ["prompt", "reference", "base", "student", "mean"]
    rows = body_rows(table)
    assert [r[0] for r in rows] == ["arith/0", "arith/3", "arith/1", "arith/2", "arith/4"]  # hardest first
    assert rows[0] == ["arith/0", "60", "2/4", "2/4", "50%"] and rows[2] == ["arith/1", "61", "2/4", "3/4", "62%"]


def test_examples_are_deterministic(real_run):
    def browser_part(html: str) -> str:
        return html[html.index('<section id="samples">'):]

    assert browser_part(render_report(real_run)) == browser_part(render_report(real_run))


def test_empty_run_says_not_run_for_the_new_sections(tmp_path):
    tree = parse_dom(render_report(tmp_path))
    for section_id in ("samples", "wrong-answers", "prompt-pass-rates"):
        assert "not run" in tree.by_id(section_id).find_all("h2")[0].text()


def test_selection_by_another_rule_stays_at_curate(tmp_path):
    """Curate selected by correctness (not verify's marks): the drops stay where they happened, in curate."""
    for stage, counts in {"verify": {"records_in": 10, "records_out": 10, "dropped": {},
                                     "extra": {"not_selected": 4, "select_reason": {"rejected: accuracy wrong": 4}}},
                          "curate": {"records_in": 10, "records_out": 7, "dropped": {"selection:incorrect": 3}}}.items():
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "counts.json").write_text(json.dumps({"stage": stage, **counts}))
    rows = {r["stage"]: r for r in funnel_rows(tmp_path, [])}
    assert rows["verify"]["records_out"] == 10 and rows["verify"]["dropped"] == {}
    assert rows["curate"]["records_in"] == 10 and rows["curate"]["dropped"] == {"selection:incorrect": 3}
    (tmp_path / "curate" / "counts.json").unlink()  # curate not run yet: verify's marks are its decisions
    rows = {r["stage"]: r for r in funnel_rows(tmp_path, [])}
    assert rows["verify"]["records_out"] == 6 and rows["verify"]["dropped"] == {"accuracy wrong": 4}

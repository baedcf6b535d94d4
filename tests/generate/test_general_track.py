"""The non-reasoning track: `general` prompt sources (chat columns too), templates that answer without a CoT (the
empty `<think>\\n\\n</think>` opening) or with a short one, the format reward and curate filters that accept the
empty CoT for general only, and a `track` column that keeps the two tracks apart; end to end on the real engine."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from factory.config import PipelineConfig
from factory.core.shards import iter_stage_rows
from factory.curate.config import TruncationConfig
from factory.curate.filter_pass import track_of
from factory.curate.filters.truncation import TruncationFilter
from factory.curate.stage import run_curate
from factory.generate.config import FileSource, TemplateConfig
from factory.generate.sources import SourceError, load_source
from factory.generate.stage import build_request, run_generate
from factory.generate.templates import (
    NO_COT_PREFILL,
    instructions_for,
    prefill_for,
    split_think,
)
from factory.verify.rewards.format import score_format
from factory.verify.stage import run_verify

GENERAL = [{"id": "hello", "q": "Say hello to me.", "a": None},
           {"id": "fr", "q": "Translate 'good morning' into French.", "a": "Bonjour"}]


def write_general(path, rows=GENERAL):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompt(domain: str) -> dict:
    return {"prompt_id": f"{domain}-1", "source": "t", "domain": domain, "problem": "Hi there, who are you?",
            "answer": None, "tests": None, "language": "en", "metadata": None}


def test_tracks_choose_opening_and_instruction(embedded_dir):
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    t = TemplateConfig(tracks={"general": "no_cot", "science": "short_cot"})
    req, text = build_request(prompt("general"), t, tok)
    assert text.endswith("<|im_start|>assistant\n" + NO_COT_PREFILL) and req.prefill == NO_COT_PREFILL
    req, text = build_request(prompt("math"), t, tok)
    assert text.endswith("assistant\n<think>\n") and "\\boxed{}" in text  # the reasoning track is unchanged
    assert t.short_cot_instruction in instructions_for(prompt("science"), t)["science"]
    assert prefill_for(prompt("science"), t) == "<think>\n"
    req, recorded = build_request(prompt("general"), t, None, chat_api=True)  # servers: the assistant turn continued
    assert req.prefill == NO_COT_PREFILL and json.loads(recorded)[-1] == {"role": "assistant",
                                                                           "content": NO_COT_PREFILL}
    split = split_think(NO_COT_PREFILL + "Hello!")
    assert (split.reasoning, split.answer_text, split.think_closed) == ("", "Hello!", True)


def test_empty_cot_is_accepted_for_general_only():
    reply = NO_COT_PREFILL + "Hello!"
    assert score_format(reply, "chat", allow_empty_reasoning=True).verdict == "ok"
    assert score_format(reply, "chat").verdict == "empty_reasoning"
    f = TruncationFilter(TruncationConfig())
    rec = {"finish_reason": "stop", "think_closed": True, "reasoning": "", "answer_text": "Hello!"}
    assert f.check({**rec, "domain": "general"})[0] and f.check({**rec, "domain": "math"})[1] == "empty_reasoning"
    assert track_of({"domain": "general", "reasoning": "a short one"}) == "non_reasoning"
    assert track_of({"domain": "math", "reasoning": "long"}) == "reasoning"


def test_general_sources_from_chat_columns(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Hi!"},
                          {"role": "assistant", "content": "Hello."}]},
            {"conversations": [{"from": "human", "value": "Name a colour."}]}]
    path = write_general(tmp_path / "chat.jsonl", rows[:1])
    got = load_source(FileSource(kind="jsonl", path=path, domain="general", columns={"problem": "messages"}))
    assert (got[0]["problem"], got[0]["answer"], got[0]["domain"]) == ("Hi!", "Hello.", "general")
    path = write_general(tmp_path / "sharegpt.jsonl", rows[1:])
    got = load_source(FileSource(kind="jsonl", path=path, domain="general", columns={"problem": "conversations"}))
    assert (got[0]["problem"], got[0]["answer"]) == ("Name a colour.", None)
    write_general(path, [{"messages": [{"role": "assistant", "content": "no question"}]}])
    with pytest.raises(SourceError, match=r"sharegpt\.jsonl:1: the chat column has no user turn"):
        load_source(FileSource(kind="jsonl", path=path, domain="general", columns={"problem": "messages"}))
    write_general(path, [{"messages": ["just text"]}])
    with pytest.raises(SourceError, match=r"sharegpt\.jsonl:1: a chat column must be a list of"):
        load_source(FileSource(kind="jsonl", path=path, domain="general", columns={"problem": "messages"}))


@pytest.mark.engine
def test_both_tracks_end_to_end(engine, tmp_path):
    general = write_general(tmp_path / "general.jsonl")
    cfg = PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": 2, "seed": 5},
                    {"kind": "jsonl", "path": str(general), "domain": "general",
                     "columns": {"prompt_id": "id", "problem": "q", "answer": "a"}}],
        "template": {"tracks": {"general": "no_cot"}}, "sampling": {"n": 2, "max_tokens": 24},
        "curate": {"selection": {"mode": "off"}, "language": {"enabled": False}, "dedupe": {"enabled": False},
                   "decontam": {"enabled": False}, "readability": {"min_answer_words": 0},
                   "truncation": {"drop_length": False, "require_answer": False}}})
    run_generate(cfg, tmp_path, teacher=engine)
    traces = list(iter_stage_rows(tmp_path / "generate", "trace"))
    for t in traces:
        if t["domain"] == "general":
            assert t["completion"].startswith(NO_COT_PREFILL) and t["prompt_text"].endswith(NO_COT_PREFILL)
            assert t["reasoning"] == "" and t["think_closed"]
        else:
            assert t["completion"].startswith("<think>\n") and not t["completion"].startswith(NO_COT_PREFILL)
    run_verify(cfg, tmp_path)
    for v in iter_stage_rows(tmp_path / "verify", "verdict"):
        if v["domain"] == "general" and v["answer_text"]:
            assert v["format_verdict"] == "ok" and "no CoT" in v["format_reason"]
    run_curate(cfg, tmp_path)
    curated = [r for part in sorted((tmp_path / "curate").glob("part-*.parquet"))
               for r in pq.read_table(part, columns=["domain", "track", "messages"]).to_pylist()]
    general_rows = [r for r in curated if r["domain"] == "general"]
    assert general_rows and {r["track"] for r in general_rows} == {"non_reasoning"}
    assert all(r["messages"][1]["content"].startswith("<think>\n\n</think>\n\n") for r in general_rows)
    assert {r["track"] for r in curated if r["domain"] == "math"} <= {"reasoning"}

"""`factory preview`: the prompts are exactly what generate sends (same code path), token counts come from the
teacher's tokenizer, the plan adds up, and no engine is started."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _fake_teacher import RecordingTeacher

from factory.config import PipelineConfig, load_pipeline
from factory.core.shards import iter_stage_rows
from factory.generate.preview import build_preview, format_preview, load_tokenizer
from factory.generate.sources import load_prompts
from factory.generate.stage import build_request, run_generate

FEWSHOT = [{"user": "What is 3 + 4?", "assistant": "<think>\n3 + 4 = 7\n</think>\n\nThe answer is \\boxed{7}."}]


def config(**over) -> PipelineConfig:
    tree = {"name": "t", "prompts": [{"kind": "arithmetic", "n": 7, "seed": 5}],
            "template": {"kind": "chat", "fewshot": FEWSHOT}, "teacher": {"model": "embedded"},
            "sampling": {"n": 3, "max_tokens": 50}, "generate": {"shard_size": 3}}
    tree.update(over)
    return PipelineConfig.model_validate(tree)


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return load_tokenizer(str(embedded_dir))


def test_preview_prompts_equal_what_generate_sends(tmp_path, tokenizer):
    cfg = config()
    preview = build_preview(cfg, n=7)
    teacher = RecordingTeacher(tokenizer)
    run_generate(cfg, tmp_path, teacher=teacher)
    sent = {r.key: r.prompt for r in teacher.requests}
    assert [p.prompt_id for p in preview.prompts] == [p["prompt_id"] for p in load_prompts(cfg.prompts)]
    assert {p.prompt_id: p.prompt for p in preview.prompts} == sent
    # ... and what build_request makes of the same prompts, and what generate records as prompt_text
    for p, record in zip(preview.prompts, load_prompts(cfg.prompts)):
        req, text = build_request(record, cfg.template, tokenizer)
        assert (p.prompt, p.text, p.messages) == (req.prompt, text, None)
        assert p.prompt.endswith("<|im_start|>assistant\n<think>\n") and "What is 3 + 4?" in p.prompt
        assert p.tokens == len(tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) > 20
    recorded = {r["prompt_id"]: r["prompt_text"] for r in iter_stage_rows(tmp_path / "generate", "trace")}
    assert recorded == {p.prompt_id: p.text for p in preview.prompts}


def test_preview_of_the_chat_api_shows_the_messages():
    cfg = config(teacher={"backend": "openai", "model": "r1", "base_url": "http://127.0.0.1:9/v1"})
    preview = build_preview(cfg, n=2)  # no server is contacted and no tokenizer is needed
    assert preview.chat_api and preview.tokenizer is None
    for p, record in zip(preview.prompts, load_prompts(cfg.prompts)):
        req, text = build_request(record, cfg.template, None, chat_api=True)
        assert (p.messages, p.text, p.tokens) == (req.messages, text, None)
        assert p.messages[-1] == {"role": "user", "content": record["problem"] + "\n" + cfg.template.instructions["math"]}
    assert '"role": "user"' in format_preview(preview)


def test_the_plan_counts_prompts_samples_tokens_and_shards():
    cfg = config(template={"kind": "r1_zero"})
    plan = build_preview(cfg, n=0).plan
    assert plan == {"prompts": 7, "k": 3, "samples": 21, "max_tokens": 50, "max_generated_tokens": 21 * 50,
                    "shard_size": 3, "shards": 3}
    text = format_preview(build_preview(cfg, n=1))
    assert "7 prompts × k=3 = 21 samples" in text and "≤ 1,050 generated tokens" in text and "3 shards" in text


def test_factory_preview_starts_no_engine(repo):
    """The CLI command in a fresh interpreter: the demo's first prompt, as JSON, and vllm never imported."""
    code = f"""
import json, sys
from typer.testing import CliRunner
from factory.cli import app
result = CliRunner().invoke(app, ["preview", {str(repo / "pipelines" / "demo.yaml")!r}, "-n", "1", "--json"])
print(json.dumps({{"rc": result.exit_code, "output": result.output,
                  "engine": sorted(m for m in sys.modules if m.split(".")[0] == "vllm")}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["output"]
    assert result["engine"] == []
    shown = json.loads(result["output"])
    demo = load_pipeline(repo / "pipelines" / "demo.yaml")
    assert shown["plan"]["prompts"] == 96 and shown["plan"]["samples"] == 96 * demo.sampling.n
    assert shown["prompts"][0]["prompt"].endswith("<think>\n") and shown["prompts"][0]["tokens"] > 0

"""`factory preview`: what generate would send, without starting an engine.

The first N prompts rendered through generate's own `build_request` (the same code path, so the text is exactly
what the teacher receives), their token counts with the teacher's tokenizer (transformers' AutoTokenizer from the
model folder; for the OpenAI chat API the messages, counted only when `teacher.tokenizer` is set), the prompts
decontamination would drop before generation, and the planned work: prompts × k samples, an upper bound on the
generated tokens (prompts × k × sampling.max_tokens) and the number of shards.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from factory.config import PipelineConfig
from factory.generate.config import OpenAITeacherConfig
from factory.generate.sources import load_prompts
from factory.generate.stage import build_request, uses_chat_api


@dataclass
class PromptPreview:
    prompt_id: str
    source: str
    text: str                                  # the prompt as recorded in `prompt_text` (chat API: messages JSON)
    messages: list[dict[str, str]] | None      # chat API only: the messages sent
    prompt: str | None                         # the templated text sent (offline engine, completions API)
    tokens: int | None                         # prompt tokens with the teacher's tokenizer; None without one


@dataclass
class Preview:
    teacher: str
    tokenizer: str | None
    chat_api: bool
    prompts: list[PromptPreview]
    plan: dict[str, Any]
    decontam: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict:
        return {"teacher": self.teacher, "tokenizer": self.tokenizer, "chat_api": self.chat_api,
                "prompts": [vars(p) for p in self.prompts], "plan": self.plan, "decontam": self.decontam}


def tokenizer_source(cfg: PipelineConfig) -> str | None:
    """The folder or Hub id of the teacher's tokenizer (`embedded`: the converted SmolLM2 folder), or None."""
    teacher = cfg.teacher
    if isinstance(teacher, OpenAITeacherConfig):
        return teacher.tokenizer
    name = teacher.tokenizer or teacher.model
    if name == "embedded":
        from factory.core.embedded import embedded_model_dir

        return str(embedded_model_dir())
    return name


def load_tokenizer(source: str | None):
    if source is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors, ...
        raise ValueError(f"preview: cannot load the teacher's tokenizer from {source!r}: {exc}") from exc


def _count(tokenizer, prompt: str | None, messages: list[dict] | None, prefill: str) -> int | None:
    if tokenizer is None:
        return None
    if prompt is not None:  # the templated text carries its special tokens already
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_preview(cfg: PipelineConfig, n: int = 3) -> Preview:
    """The first `n` requests generate would send for this pipeline, and the work it plans; starts no engine."""
    from factory.curate.decontam_plan import decontaminate_prompts, pipeline_decontam

    prompts, dropped = decontaminate_prompts(load_prompts(cfg.prompts), pipeline_decontam(cfg))
    chat_api = uses_chat_api(cfg)
    source = tokenizer_source(cfg)
    needed = not chat_api and cfg.template.kind == "chat"  # the chat template is rendered locally
    if source is None and needed:
        raise ValueError("preview: teacher.tokenizer is needed to render the chat template locally")
    try:
        tokenizer = load_tokenizer(source)
    except ValueError:
        if needed:
            raise
        tokenizer = source = None  # r1_zero / jinja render without it: show the prompts, count no tokens
    shown = []
    for p in prompts[:n]:
        req, text = build_request(p, cfg.template, tokenizer, chat_api)
        shown.append(PromptPreview(prompt_id=p["prompt_id"], source=p["source"], text=text, messages=req.messages,
                                   prompt=req.prompt, tokens=_count(tokenizer, req.prompt, req.messages, req.prefill)))
    k, size = cfg.sampling.n, cfg.generate.shard_size
    plan = {"prompts": len(prompts), "k": k, "samples": len(prompts) * k, "max_tokens": cfg.sampling.max_tokens,
            "max_generated_tokens": len(prompts) * k * cfg.sampling.max_tokens, "shard_size": size,
            "shards": math.ceil(len(prompts) / size)}
    counted = [p.tokens for p in shown if p.tokens is not None]
    if counted:
        plan["mean_prompt_tokens_shown"] = round(sum(counted) / len(counted), 1)
    return Preview(teacher=f"{cfg.teacher.backend}:{cfg.teacher.model}", tokenizer=source, chat_api=chat_api,
                   prompts=shown, plan=plan, decontam=dropped)


def format_preview(preview: Preview) -> str:
    """Plain text for the console: each prompt verbatim between rules, then the plan."""
    lines = [f"teacher: {preview.teacher}   tokenizer: {preview.tokenizer or '(none: the server templates)'}"]
    total = preview.plan["prompts"]
    for i, p in enumerate(preview.prompts, 1):
        tokens = f"{p.tokens} tokens" if p.tokens is not None else "tokens: n/a (no local tokenizer)"
        lines.append(f"─── prompt {i}/{total} · {p.prompt_id} · {p.source} · {tokens} " + "─" * 8)
        if p.messages is not None:
            lines.append(json.dumps(p.messages, ensure_ascii=False, indent=2))
        else:
            lines.append(p.prompt or "")
    lines.append("─" * 40)
    d = preview.decontam
    if d and d["prompts_removed"]:
        per = ", ".join(f"{name} {b['prompts_removed']}" for name, b in d["benchmarks"].items() if b["prompts_removed"])
        lines.append(f"decontamination: {d['prompts_removed']} prompts dropped before generation ({per})")
    elif d:
        lines.append(f"decontamination: no prompt matches {', '.join(d['benchmarks'])}")
    plan = preview.plan
    lines.append(f"plan: {plan['prompts']:,} prompts × k={plan['k']} = {plan['samples']:,} samples; "
                 f"≤ {plan['max_generated_tokens']:,} generated tokens ({plan['samples']:,} × max_tokens "
                 f"{plan['max_tokens']:,}); {plan['shards']} shards of ≤ {plan['shard_size']} prompts")
    return "\n".join(lines)

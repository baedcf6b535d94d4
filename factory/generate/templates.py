"""Prompt templates: the R1-Zero template of the paper, the chat template with a forced "<think>\\n" opening, a
user-supplied Jinja template, and per-domain instructions; plus splitting a completion on <think>...</think>.

Tracks (`template.tracks`, per domain): `reasoning` (the default) forces the `<think>\\n` opening; `no_cot` is the
paper's non-reasoning track for simple queries: the reply is forced to open with an empty `<think>\\n\\n</think>`
(R1's own form of an answer without a CoT), so the teacher answers at once; `short_cot` keeps the opening and asks
for a brief CoT in the user turn."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jinja2

from factory.generate.config import DEFAULT_INSTRUCTIONS, TemplateConfig, TemplateKind  # noqa: F401

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)


THINK_OPEN = "<think>"
NO_COT_PREFILL = "<think>\n\n</think>\n\n"


def track_of(record: dict, t: TemplateConfig) -> str:
    """reasoning | no_cot | short_cot: the track of a prompt's domain."""
    return t.tracks.get(record.get("domain") or "", "reasoning")


def prefill_for(record: dict, t: TemplateConfig) -> str:
    """The forced reply opening of one prompt: the empty think block on the no_cot track, else `t.prefill`."""
    return NO_COT_PREFILL if track_of(record, t) == "no_cot" else t.prefill


def instructions_for(record: dict, t: TemplateConfig) -> dict[str, str]:
    """The per-domain instructions, with the brief-CoT request added for a short_cot domain."""
    if track_of(record, t) != "short_cot":
        return t.instructions
    domain = record.get("domain") or ""
    joined = " ".join(x for x in (t.instructions.get(domain, ""), t.short_cot_instruction) if x)
    return {**t.instructions, domain: joined}


def with_instruction(problem: str, domain: str, instructions: dict[str, str]) -> str:
    instruction = instructions.get(domain, "")
    return f"{problem.rstrip()}\n{instruction}" if instruction else problem


def user_message(record: dict, instructions: dict[str, str]) -> str:
    return with_instruction(record["problem"], record["domain"], instructions)


def render_r1_zero(record: dict, instructions: dict[str, str]) -> str:
    return R1_ZERO_TEMPLATE.format(prompt=user_message(record, instructions))


def chat_messages(record: dict, instructions: dict[str, str], system: str | None = None,
                  fewshot: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """R1 usage: no system prompt unless one is configured; all instructions in the user turn. `fewshot` example
    turns ({user, assistant}) come first: they teach a weak teacher the <think> format."""
    messages = [{"role": "system", "content": system}] if system else []
    for shot in fewshot or []:
        messages += [{"role": "user", "content": shot["user"]}, {"role": "assistant", "content": shot["assistant"]}]
    messages.append({"role": "user", "content": user_message(record, instructions)})
    return messages


def render_chat(record: dict, instructions: dict[str, str], tokenizer: Any, prefill: str,
                system: str | None = None, fewshot: list[dict[str, str]] | None = None) -> str:
    """The student/teacher chat template with the generation prompt, then the forced reply opening."""
    text = tokenizer.apply_chat_template(chat_messages(record, instructions, system, fewshot), tokenize=False,
                                         add_generation_prompt=True)
    # Some R1 templates already end the generation prompt with "<think>\n": never open the tag twice.
    if prefill and text.rstrip().endswith(prefill.strip()):
        return text
    if prefill.startswith(THINK_OPEN) and text.rstrip().endswith(THINK_OPEN):  # e.g. the no_cot opening
        return text.rstrip() + prefill[len(THINK_OPEN):]
    return text + prefill


def render_jinja(record: dict, instructions: dict[str, str], template: str) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return env.from_string(template).render(**record, instruction=instructions.get(record["domain"], ""),
                                                user_message=user_message(record, instructions))
    except jinja2.UndefinedError as exc:
        raise ValueError(f"jinja template: {exc} (fields available: {sorted(record)})") from exc


@dataclass(frozen=True)
class SplitTrace:
    reasoning: str
    answer_text: str
    think_closed: bool


_OPEN = re.compile(r"<think>")
_CLOSE = "</think>"


def split_think(completion: str) -> SplitTrace:
    """Split a completion (prefilled opening tag included) into reasoning and the reader-facing answer.

    The reasoning runs from the first <think> (or the start, when the opening was prefilled and not echoed) to the
    first </think>; a missing </think> marks the trace unfinished: all text is reasoning, the answer is empty.
    """
    close = completion.find(_CLOSE)
    opened = _OPEN.search(completion)
    start = opened.end() if opened and (close < 0 or opened.start() < close) else 0
    if close < 0:
        return SplitTrace(reasoning=completion[start:].strip(), answer_text="", think_closed=False)
    return SplitTrace(reasoning=completion[start:close].strip(),
                      answer_text=completion[close + len(_CLOSE):].strip(), think_closed=True)

"""Prompt templates: the R1-Zero template of the paper, the chat template with a forced "<think>\\n" opening, a
user-supplied Jinja template, and per-domain instructions; plus splitting a completion on <think>...</think>."""
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

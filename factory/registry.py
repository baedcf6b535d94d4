"""The one stage registry: `factory run`, the CLI's stage commands and the config's list of valid stages all
derive from it. A leaf module: a stage's implementation is imported only when the stage runs."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Stage(Protocol):
    """The stage contract: read the run folder's input, write `run_dir/<stage>/`, return its counts. `cfg` is the
    pipeline's `factory.config.PipelineConfig` (not imported here: the pipeline config imports this registry)."""

    def __call__(self, cfg: Any, run_dir: Path, *, new_run: bool = False) -> dict: ...


@dataclass(frozen=True)
class StageSpec:
    name: str
    target: str        # "module:function" implementing the `Stage` contract
    summary: str       # one line for `factory --help` and the stage's command

    def load(self) -> Stage:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


_SPECS = (
    StageSpec("generate", "factory.generate.stage:run_generate",
              "Prompts → k teacher traces per prompt (DIR/generate/)."),
    StageSpec("verify", "factory.verify.stage:run_verify",
              "Traces → rule-based rewards (math, code in a sandbox, choice, format) and rejection sampling "
              "(DIR/verify/)."),
    StageSpec("curate", "factory.curate.stage:run_curate",
              "Verdicts → selection, truncation, language, readability, repetition, decontam, dedupe (DIR/curate/)."),
    StageSpec("mix", "factory.mix.stage:run_mix",
              "Curated sets of one or more runs → a mixture to counts or ratios, seeded, with lineage (DIR/mix/)."),
    StageSpec("sft", "factory.train.stage:run_sft_stage",
              "Curated messages → a LoRA or fully fine-tuned student (DIR/sft/); resumes from its last checkpoint."),
    StageSpec("grpo", "factory.grpo.stage:run_grpo",
              "Prompts with answers → GRPO (R1-Zero RL) of a policy on verify's rewards; rollouts as trace shards "
              "(DIR/grpo/); resumes from its last checkpoint."),
    StageSpec("eval", "factory.eval.stage:run_eval",
              "Models × benchmarks, k samples each: pass@1 ± SE, cons@k, length, truncation (DIR/eval/)."),
    StageSpec("publish", "factory.publish.stage:publish_stage",
              "Curated dataset (and trained student) → Hub repos with cards (DIR/publish/)."),
    StageSpec("report", "factory.report.html:report_stage",
              "Write DIR/report.html: funnel, distributions, loss curve and eval table in one self-contained file."),
)
STAGES: dict[str, StageSpec] = {spec.name: spec for spec in _SPECS}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)


def stage(name: str) -> Stage:
    """The implementation of stage `name`; an unknown name is a ValueError listing the known ones."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r} (known: {', '.join(STAGE_NAMES)})")
    return STAGES[name].load()

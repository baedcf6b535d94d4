"""`factory run` skips SFT only when it finished after its input was written, with the same configuration."""
from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from factory.config import PipelineConfig
from factory.train.stage import run_sft_stage


def test_sft_is_skipped_only_when_newer_than_its_input(tmp_path):
    cfg = PipelineConfig.model_validate({"prompts": [], "sft": {"student": str(tmp_path / "student")}})
    (tmp_path / "curate").mkdir()
    (tmp_path / "curate" / "counts.json").write_text("{}")
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "sft_config.yaml").write_text(yaml.safe_dump({"sft": cfg.sft.model_dump()}, sort_keys=False))
    time.sleep(0.01)
    (sft / "counts.json").write_text(json.dumps({"stage": "sft", "records_out": 3}))
    assert run_sft_stage(cfg, tmp_path)["records_out"] == 3  # finished after its input: not trained again

    later = time.time() + 5
    os.utime(tmp_path / "curate" / "counts.json", (later, later))  # curate was rerun since
    with pytest.raises(OSError):  # so SFT runs again (and here fails fast: the student folder does not exist)
        run_sft_stage(cfg, tmp_path)

"""`factory run` skips SFT only when it finished with the same configuration and the same input (curate's manifest
fingerprint and part checksums, not file times); otherwise it is refused, naming what changed, until --new-run."""
from __future__ import annotations

import json

import pytest

from factory.config import PipelineConfig
from factory.core.shards import StageConfigChanged
from factory.train.manifest import check, sft_inputs
from factory.train.stage import run_sft_stage


def _finished_curate(run, fingerprint="c1", part=b"rows"):
    curate = run / "curate"
    curate.mkdir(exist_ok=True)
    (curate / "part-00000.parquet").write_bytes(part)
    (curate / "manifest.json").write_text(json.dumps({"stage": "curate", "fingerprint": fingerprint}))
    (curate / "counts.json").write_text("{}")


def test_sft_is_skipped_only_for_the_same_configuration_and_input(tmp_path):
    cfg = PipelineConfig.model_validate({"prompts": [], "sft": {"student": str(tmp_path / "student")}})
    _finished_curate(tmp_path)
    sft = tmp_path / "sft"
    sft.mkdir()
    _, manifest = check(sft, cfg.sft, sft_inputs(cfg.sft, tmp_path))
    (sft / "manifest.json").write_text(json.dumps(manifest))
    (sft / "counts.json").write_text(json.dumps({"stage": "sft", "records_out": 3}))
    assert run_sft_stage(cfg, tmp_path)["records_out"] == 3  # same config and input: not trained again

    (tmp_path / "curate" / "counts.json").touch()  # a newer file time alone changes nothing
    assert run_sft_stage(cfg, tmp_path)["records_out"] == 3

    other = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"learning_rate": 1e-3})})
    with pytest.raises(StageConfigChanged, match=r"sft\.learning_rate: 0\.0001 → 0\.001"):
        run_sft_stage(other, tmp_path)
    _finished_curate(tmp_path, fingerprint="c2")  # curate was re-run with another configuration
    with pytest.raises(StageConfigChanged, match=r"input: curate was re-run \(fingerprint c1… → c2…\)") as info:
        run_sft_stage(cfg, tmp_path)
    assert info.value.input_changed and not info.value.config_changed
    assert json.loads((sft / "manifest.json").read_text()) == manifest  # nothing recorded by the refused runs
    with pytest.raises(OSError):  # --new-run trains again (and here fails fast: the student does not exist) ...
        run_sft_stage(cfg, tmp_path, new_run=True)
    assert list(sft.iterdir()) == []  # ... leaving no manifest for work that never happened

"""Pipeline config: YAML → pydantic, errors that name the key, and --set overrides."""
from __future__ import annotations

import pytest

from factory.config import ConfigError, load_pipeline

BASE = """
name: t
prompts:
  - {kind: arithmetic, n: 4}
"""


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_r1_protocol(tmp_path):
    cfg = load_pipeline(_write(tmp_path, BASE))
    assert (cfg.sampling.temperature, cfg.sampling.top_p) == (0.6, 0.95)
    assert cfg.template.kind == "chat" and cfg.template.prefill == "<think>\n" and cfg.template.system is None
    assert "\\boxed{}" in cfg.template.instructions["math"]


def test_the_shipped_demo_pipeline_validates(repo):
    cfg = load_pipeline(repo / "pipelines" / "demo.yaml")
    assert cfg.teacher.model == "embedded"


@pytest.mark.parametrize("extra, message", [
    ("teacher:\n  modle: x\n", "teacher.modle: Extra inputs are not permitted"),
    ("sampling:\n  n: many\n", "sampling.n: Input should be a valid integer"),
    ("sampling:\n  top_p: 2\n", "sampling.top_p: Input should be less than or equal to 1"),
    ("teacher:\n  backend: openai\n  model: m\n", "teacher: Value error, give exactly one of base_url (one endpoint) "
                                                  "or base_urls (several)"),
    ("bogus: 1\n", "bogus: Extra inputs are not permitted"),
])
def test_errors_name_the_file_and_key(tmp_path, extra, message):
    path = _write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_required_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="prompts: Field required"):
        load_pipeline(_write(tmp_path, "name: x\n"))
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(_write(tmp_path, "a: [\n"))


def test_set_overrides_reach_nested_keys(tmp_path):
    cfg = load_pipeline(_write(tmp_path, BASE), ["sampling.n=8", "teacher.max_model_len=512", "prompts.0.n=9",
                                                 "template.kind=r1_zero"])
    assert (cfg.sampling.n, cfg.teacher.max_model_len, cfg.prompts[0].n, cfg.template.kind) == (8, 512, 9, "r1_zero")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_pipeline(_write(tmp_path, BASE), ["sampling.n"])
    with pytest.raises(ConfigError, match="sampling.nn: Extra inputs"):
        load_pipeline(_write(tmp_path, BASE), ["sampling.nn=3"])

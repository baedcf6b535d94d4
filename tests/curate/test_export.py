"""The training-ready shapes: `messages` (R1 reply pattern) and ShareGPT JSONL for LLaMA-Factory."""
import json

import pytest

from _curate_data import cot, trace, write_stage
from factory.curate.filter_pass import CurateConfig
from factory.curate.stage import curate_stage
from factory.curate.export import assistant_content, export_sharegpt, to_messages, to_sharegpt


def test_messages_follow_the_r1_pattern():
    msgs = to_messages("What is 2+2?", "\nI add 2 and 2.\n", "  The answer is $\\boxed{4}$.\n")
    assert msgs == [{"role": "user", "content": "What is 2+2?"},
                    {"role": "assistant",
                     "content": "<think>\nI add 2 and 2.\n</think>\n\nThe answer is $\\boxed{4}$."}]
    assert assistant_content("x", "y").startswith("<think>\n") and "\n</think>\n\n" in assistant_content("x", "y")


def test_sharegpt_roles():
    conv = to_sharegpt([{"role": "system", "content": "s"}, *to_messages("q", "r", "a")])
    assert conv == {"conversations": [{"from": "human", "value": "q"},
                                      {"from": "gpt", "value": "<think>\nr\n</think>\n\na"}], "system": "s"}
    with pytest.raises(ValueError, match="tool"):
        to_sharegpt([{"role": "tool", "content": "x"}])


def test_export_curated_folder_to_sharegpt(tmp_path):
    rows = [trace("a", i) for i in range(3)] + [trace("b", 0, problem="A different question about primes below 50?",
                                                          reasoning=cot(7))]
    write_stage(tmp_path / "generate", [rows])
    curate_stage(tmp_path / "generate", tmp_path / "curate", CurateConfig())
    out = tmp_path / "llamafactory" / "r1.jsonl"
    n = export_sharegpt(tmp_path / "curate", out, dataset_name="r1_distill")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(lines) == 4
    assert lines[0]["conversations"][0] == {"from": "human", "value": rows[0]["problem"]}
    assert lines[0]["conversations"][1]["value"].startswith("<think>\n")
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert info["r1_distill"]["file_name"] == "r1.jsonl" and info["r1_distill"]["formatting"] == "sharegpt"
    assert info["r1_distill"]["tags"]["assistant_tag"] == "gpt"


def test_export_of_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no part-"):
        export_sharegpt(tmp_path, tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()

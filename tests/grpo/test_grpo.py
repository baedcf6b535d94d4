"""GRPO stage: a few real steps of a tiny random Llama under the embedded model's real tokenizer, with the real
rewards (verify's accuracy and format, plus a user reward so groups have non-zero advantages)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # _grpo_rewards and _policy (spawned reward workers inherit sys.path)

from _policy import build_policy, pipeline_tree  # noqa: E402

from factory.config import ConfigError, PipelineConfig, load_pipeline  # noqa: E402

REWARDS = {"accuracy": 1.0, "format": 1.0, "_grpo_rewards:chars": 1.0}
TRAIN = {"rewards": REWARDS, "learning_rate": 1e-4, "drop_equal_groups": True}


@pytest.fixture(scope="module")
def threads():
    """One torch thread: the CPU is shared, and spinning OpenMP threads are many times slower there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return build_policy(tmp_path_factory.mktemp("grpo-policy") / "tiny-llama")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, policy, threads) -> Path:
    """Two GRPO steps, a checkpoint after each."""
    from factory.grpo.stage import run_grpo

    out = tmp_path_factory.mktemp("grpo-run")
    cfg = PipelineConfig.model_validate(pipeline_tree(policy, steps=2, **TRAIN))
    run_grpo(cfg, out)
    return out


def _parts(run: Path) -> list[Path]:
    return sorted((run / "grpo" / "rollouts").glob("part-*.parquet"))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "grpo" / "train_log.jsonl").read_text().splitlines()]


def test_rollouts_are_trace_shards_with_steps_and_rewards(trained):
    parts = _parts(trained)
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    meta = pq.read_schema(parts[0]).metadata
    assert meta[b"factory.schema"] == b"trace"
    rows = pq.read_table(parts[0]).to_pylist()
    assert len(rows) == 2 * 4 and {r["grpo_step"] for r in rows} == {0}
    for r in rows:
        assert r["completion"].startswith("<think>\n") and r["template"] == "r1_zero"
        rewards = json.loads(r["rewards"])
        assert set(rewards) == set(REWARDS)
        assert math.isclose(r["reward"], sum(rewards.values()))
        assert r["completion_tokens"] == len(r["completion_token_ids"]) > 0
    keys = [(r["prompt_id"], r["sample_idx"]) for p in parts for r in pq.read_table(p).to_pylist()]
    assert len(keys) == len(set(keys))
    log = _log(trained)
    assert [e["step"] for e in log] == [1, 2]
    for key in ("reward", "rewards/accuracy/mean", "rewards/format/mean", "completions/mean_length", "kl",
                "clip_ratio/region_mean", "rewards/timeouts", "groups/equal_reward"):
        assert key in log[0], key
    counts = json.loads((trained / "grpo" / "counts.json").read_text())
    assert counts["records_out"] == 16 and counts["extra"]["steps"] == 2
    assert (trained / "grpo" / "model" / "config.json").exists()


def test_advantages_equal_the_group_normalised_rewards(trained):
    """advantage_i = (r_i - mean(r)) / (std(r) + 1e-4) within each group of G (Bessel-corrected std, as TRL)."""
    for part in _parts(trained):
        rows = pq.read_table(part).to_pylist()
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r["prompt_id"], []).append(r)
        assert all(len(g) == 4 for g in groups.values())
        for group in groups.values():
            rewards = [r["reward"] for r in group]
            mean = sum(rewards) / 4
            std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / 3)
            for r, x in zip(group, rewards):
                assert r["advantage"] == pytest.approx((x - mean) / (std + 1e-4), rel=1e-4, abs=1e-5)


def test_a_fixed_group_by_hand():
    """The same formula on a group fixed here: rewards 1, 0, 0, 1 → ±0.5 / (0.57735 + 1e-4)."""
    import torch
    from trl.trainer.utils import nanstd

    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    adv = (r - r.mean(dim=1, keepdim=True)) / (nanstd(r, dim=1, keepdim=True) + 1e-4)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv.flatten().tolist() == pytest.approx([expected, -expected, -expected, expected], rel=1e-6)


def _mean_logps(model_dir: Path, rows: list[dict]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for r in rows:
            prompt = tok(r["prompt_text"])["input_ids"]
            ids = torch.tensor([prompt + r["completion_token_ids"]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            target = ids[0, 1:]
            token = logp.gather(1, target[:, None])[:, 0][len(prompt) - 1:]
            out.append(float(token.mean()))
    return out


def test_the_update_moves_toward_the_higher_reward_samples(trained, policy):
    """Step 1 trained on step 0's rollouts: the mean token log-prob rises where the advantage is positive."""
    rows = pq.read_table(_parts(trained)[0]).to_pylist()
    assert any(abs(r["advantage"]) > 0.1 for r in rows), "the user reward should spread each group"
    before = _mean_logps(policy, rows)
    after = _mean_logps(trained / "grpo" / "checkpoints" / "checkpoint-1", rows)
    moved = sum(r["advantage"] * (a - b) for r, a, b in zip(rows, after, before))
    assert moved > 0
    best = max(range(len(rows)), key=lambda i: rows[i]["advantage"])
    worst = min(range(len(rows)), key=lambda i: rows[i]["advantage"])
    assert after[best] - before[best] > after[worst] - before[worst]


def test_rollouts_read_by_the_verify_stage(trained):
    from factory.grpo.rollouts import verify_rollouts

    counts = verify_rollouts(PipelineConfig.model_validate(pipeline_tree(Path("x"))), trained)
    assert counts["records_out"] == 16
    verdicts = [r for p in sorted((trained / "grpo" / "verify").glob("part-*.parquet"))
                for r in pq.read_table(p).to_pylist()]
    rollouts = {(r["prompt_id"], r["sample_idx"]): r for p in _parts(trained) for r in pq.read_table(p).to_pylist()}
    for v in verdicts:
        mine = json.loads(rollouts[(v["prompt_id"], v["sample_idx"])]["reward_verdicts"])
        assert v["accuracy_verdict"] == mine["accuracy"] and v["format_verdict"] == mine["format"]


def test_a_hanging_reward_is_cut_at_its_deadline():
    from factory.grpo.config import GRPOConfig
    from factory.grpo.rewards import RewardPool
    from factory.verify.config import VerifyConfig

    record = {"prompt_id": "p", "sample_idx": 0, "completion": "<think>\n1+1\n</think> <answer>2</answer>",
              "template": "r1_zero"}
    cfg = GRPOConfig(rewards={"format": 1.0, "_grpo_rewards:hang": 1.0})
    with RewardPool(cfg, VerifyConfig(), workers=1, timeout_s=1.0) as pool:
        start = time.monotonic()
        scores = pool.score([("_grpo_rewards:hang", record), ("format", record), ("_grpo_rewards:chars", record)])
        took = time.monotonic() - start
        assert [s.verdict for s in scores][0] == "timeout" and scores[0].value == 0.0
        assert scores[1].value == 1.0 and scores[1].verdict == "ok"  # the replaced worker goes on
        assert scores[2].value > 0 and pool.timeouts == 1
    assert took < 30


# -- bad input ------------------------------------------------------------------------------------------------

def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("change,key", [({"num_generations": 1}, "grpo.num_generations"),
                                        ({"rewards": {"accuracy": 1.0, "speling": 1.0}}, "grpo.rewards")])
def test_config_errors_name_the_key(tmp_path, change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_pipeline(_write(tmp_path, pipeline_tree(Path("x"), **change)))


def _stage_error(tmp_path: Path, tree: dict) -> str:
    from factory.grpo.checks import GRPOInputError
    from factory.grpo.stage import run_grpo

    with pytest.raises(GRPOInputError) as exc:
        run_grpo(PipelineConfig.model_validate(tree), tmp_path / "run")
    assert not (tmp_path / "run" / "grpo" / "checkpoints").exists()  # nothing trained
    return str(exc.value)


def test_prompts_without_answers_are_refused(tmp_path, policy):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"problem": "What is 2 + 2?", "domain": "math"}) + "\n"
                    + json.dumps({"problem": "What is 3 + 3?", "answer": "6", "domain": "math"}) + "\n")
    tree = pipeline_tree(policy)
    tree["prompts"] = [{"kind": "jsonl", "path": str(data)}]
    assert "grpo.rewards.accuracy" in _stage_error(tmp_path, tree)


def test_an_unloadable_reference_is_refused(tmp_path, policy):
    msg = _stage_error(tmp_path, pipeline_tree(policy, reference_model=str(tmp_path / "missing")))
    assert "grpo.reference_model" in msg


@pytest.mark.parametrize("template,key", [({"kind": "chat", "prefill": ""}, "grpo.template.prefill"),
                                          ({"kind": "jinja", "jinja": "Q: {{ problem }} A:", "prefill": ""},
                                           "grpo.template")])
def test_a_template_that_cannot_open_think_is_refused(tmp_path, policy, template, key):
    assert key in _stage_error(tmp_path, pipeline_tree(policy, template=template))


def test_an_unimportable_user_reward_is_refused(tmp_path, policy):
    assert "grpo.rewards.nowhere:fn" in _stage_error(tmp_path, pipeline_tree(policy, rewards={"nowhere:fn": 1.0}))


# -- kill -9 and resume ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_then_resume_logs_each_step_once(tmp_path, policy, trained):
    """Killed after its second checkpoint, the rerun continues from it: steps 1..4 logged once, one rollout part
    per step, and the same rollouts as an uninterrupted run of the first two steps (same data order, RNG)."""
    tree = pipeline_tree(policy, steps=4, **TRAIN)
    path = _write(tmp_path, tree)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "factory", "grpo", "-c", str(path), "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "grpo" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads((out / "grpo" / "counts.json").read_text())
    assert counts["extra"]["steps"] == 4 and counts["extra"]["resumed_from_step"] >= 2
    assert [e["step"] for e in _log(out)] == [1, 2, 3, 4]
    assert [p.name for p in _parts(out)] == [f"part-{i:05d}.parquet" for i in range(4)]
    for mine, ref in zip(_parts(out)[:2], _parts(trained)):
        a, b = pq.read_table(mine).to_pylist(), pq.read_table(ref).to_pylist()
        assert [r["completion_token_ids"] for r in a] == [r["completion_token_ids"] for r in b]


def test_the_report_has_a_grpo_section(trained):
    from factory.report.grpo import grpo_section
    from factory.report.html import build_context

    section = grpo_section(trained)
    assert section.status == "ok" and section.stats["steps"] == "2"
    html = str(section.plot)
    assert html.count("<svg") == 3 and "mean length" in html and "clip fraction" in html and "<td>2</td>" in html
    assert any(d.id == "grpo" for d in build_context(trained)["distributions"])


def test_language_reward_is_the_share_of_target_language_words():
    from factory.grpo.config import GRPOConfig
    from factory.grpo.rewards import score_one
    from factory.verify.config import VerifyConfig

    cfg = GRPOConfig(rewards={"language": 1.0})
    english = {"reasoning": "We add the two numbers together carefully. Three plus four makes seven in total.",
               "language": "en"}
    mixed = {"reasoning": "We add the two numbers together carefully. 然后我们把这两个数字加在一起得到七。",
             "language": "en"}
    assert score_one("language", english, cfg, VerifyConfig()).value == pytest.approx(1.0)
    assert score_one("language", mixed, cfg, VerifyConfig()).value < 0.9


def test_a_finished_run_is_not_trained_again_and_a_changed_one_is_refused(trained, policy):
    from factory.core.shards import StageConfigChanged
    from factory.grpo.stage import run_grpo

    tree = pipeline_tree(policy, steps=2, **TRAIN)
    before = (trained / "grpo" / "train_log.jsonl").read_text()
    assert run_grpo(PipelineConfig.model_validate(tree), trained)["extra"]["steps"] == 2
    assert (trained / "grpo" / "train_log.jsonl").read_text() == before
    tree["grpo"]["learning_rate"] = 1e-3
    with pytest.raises(StageConfigChanged, match=r"grpo\.learning_rate"):
        run_grpo(PipelineConfig.model_validate(tree), trained)

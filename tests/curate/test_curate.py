"""The whole curate stage on real Parquet shards: filters, decontam, cross-shard dedupe, rejected side output,
funnel, resume, workers, and bad input."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import datasets
import pyarrow.parquet as pq
import pytest

from _curate_data import BENCHMARKS, REPO, cot, rewards, synthetic_cot, trace, write_stage
from factory.curate.filter_pass import CurateConfig, CurateError, resolve_input
from factory.curate.filters import MissingFieldError
from factory.core.schema import check_shard_schema
from factory.core.shards import StageConfigChanged
from factory.curate.stage import curate_stage

LOOP = "\n\n".join(cot().split("\n\n")[1:4] * 40)
PY_BLOCK = cot() + "\n\n```python\nprint(sum(1 for n in range(1, 100) if n % 3))\n```\n"
MIXED = cot() + "\n\n" + "所以我们需要计算每个数字除以三的余数，然后统计满足条件的数目。这样答案就是六十六。" * 4


def gsm8k_problem():
    return json.loads((BENCHMARKS / "gsm8k.jsonl").read_text().splitlines()[7])


def corpus(with_rewards=True):
    """Three shards, four samples per prompt; the expected fate of every sample is written beside it."""
    r = rewards if with_rewards else (lambda *a, **k: {})
    bench = gsm8k_problem()
    shards = [
        [trace("a", i, **r(correct=i != 3)) for i in range(4)],                    # a3 wrong (not selected)
        [trace("b", 0, finish_reason="length", **r()), trace("b", 1, reasoning=MIXED, **r()),
         trace("b", 2, reasoning=PY_BLOCK, **r()), trace("b", 3, reasoning=LOOP, **r()),
         *[trace("c", i, problem="Note: " + bench["problem"].replace(" ", "  "), **r()) for i in range(4)]],
        [*[trace("d", i, problem=trace("a")["problem"].replace("100", "100.0"), **r()) for i in range(2)],  # = a
         trace("e", 0, problem="Find the sum of the first 20 odd numbers, then add 7.", source="other",
               domain="general", reasoning=cot(5), **r()),
         trace("e", 1, problem="Find the sum of the first 20 odd numbers, then add 7.", source="other",
               domain="general", reasoning=cot(5), **r())],                          # same response as e0
    ]
    expected = {("a", 3): ("selection", "not_selected"), ("b", 0): ("truncation", "finish_reason=length"),
                ("b", 1): ("language", "lang_consistency<0.9"), ("b", 2): ("readability", "code_block_in_cot"),
                ("b", 3): ("repetition", "repeated_ngram_ratio>0.3"),
                **{("c", i): ("decontam", "benchmark:gsm8k") for i in range(4)},
                ("d", 0): ("dedupe", "exact_prompt"), ("d", 1): ("dedupe", "exact_prompt"),
                ("e", 1): ("dedupe", "exact_response")}
    if not with_rewards:
        del expected[("a", 3)]
    return shards, expected


def write_corpus(run_dir, with_rewards=True):
    shards, expected = corpus(with_rewards)
    write_stage(run_dir / ("verify" if with_rewards else "generate"), shards)
    return expected


CONFIG = CurateConfig(decontam={"benchmarks": [{"path": str(BENCHMARKS)}]})


def read(path):
    return pq.read_table(path).to_pylist()


def test_curate_end_to_end(tmp_path):
    expected = write_corpus(tmp_path)
    counts = curate_stage(resolve_input(tmp_path), tmp_path / "curate", CONFIG)
    out = tmp_path / "curate"
    funnel = json.loads((out / "funnel.json").read_text())

    assert sorted(p.name for p in (out / "rejected").iterdir()) == ["part-00000.parquet", "part-00001.parquet",
                                                                     "part-00002.parquet"]
    rejected = [r for p in sorted((out / "rejected").glob("*.parquet")) for r in read(p)]
    assert {(r["prompt_id"], r["sample_idx"]): (r["filter"], r["reason"]) for r in rejected} == expected
    by_id = {(r["prompt_id"], r["sample_idx"]): r for r in rejected}
    assert by_id[("c", 0)]["matched"] == gsm8k_problem()["id"]
    assert by_id[("d", 0)]["matched"] == "a"                      # the first occurrence won, across shards

    kept = [r for p in sorted(out.glob("part-*.parquet")) for r in read(p)]
    assert [(r["prompt_id"], r["sample_idx"]) for r in kept] == [("a", 0), ("a", 1), ("a", 2), ("e", 0)]
    first = kept[0]
    assert first["messages"][0] == {"role": "user", "content": first["problem"]}
    assert first["messages"][1]["content"] == "<think>\n" + cot(0).strip() + "\n</think>\n\nThe count is $\\boxed{66}$."
    assert first["num_tokens"] == 440 and first["teacher"] == "unit-teacher" and first["pass_rate"] == 0.75
    assert first["lang_consistency"] == 1.0 and first["repeated_ngram_ratio"] == 0.0
    assert first["longest_paragraph_words"] > 0 and first["compression_ratio"] >= 1.0
    check_shard_schema(out / "part-00000.parquet", pq.read_schema(out / "part-00000.parquet"), "curated")
    assert not (out / "_filter").exists()

    # the funnel adds up, per filter in order, per source and domain, and per benchmark
    assert (funnel["records_in"], funnel["records_out"]) == (16, 4)
    steps = {f["name"]: f for f in funnel["filters"]}
    assert [f["name"] for f in funnel["filters"]] == ["selection", "truncation", "language", "readability",
                                                      "repetition", "decontam", "dedupe"]
    assert [(f["in"], f["out"]) for f in funnel["filters"]] == [(16, 15), (15, 14), (14, 13), (13, 12), (12, 11),
                                                                (11, 7), (7, 4)]
    assert steps["dedupe"]["dropped"] == {"exact_prompt": 2, "exact_response": 1}
    assert steps["language"]["seconds"] >= 0
    assert funnel["by_source"]["other"] == {"in": 2, "out": 1, "dropped": {"dedupe": 1}}
    assert funnel["by_domain"]["general"]["out"] == 1 and funnel["by_domain"]["math"]["in"] == 14
    assert funnel["decontam"]["benchmarks"]["gsm8k"] == {
        "problems": 1319, "samples_removed": 4, "prompts_removed": 1,
        "before_selection": {"samples": 4, "prompts": 1}, "after_selection": {"samples": 4, "prompts": 1}}
    assert funnel["decontam"]["benchmarks"]["math500"]["samples_removed"] == 0
    assert counts == json.loads((out / "counts.json").read_text())
    assert (counts["records_out"], counts["rejected"]) == (4, 12)
    assert counts["dropped"]["decontam:benchmark:gsm8k"] == 4
    assert counts["extra"]["decontam"]["gsm8k"] == 4

    # loadable with datasets, the shape of OpenR1-Math-220k
    ds = datasets.load_dataset("parquet", data_files=str(out / "part-*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 4 and ds[0]["messages"][1]["role"] == "assistant"
    rej = datasets.load_dataset("parquet", data_files=str(out / "rejected" / "*.parquet"), split="train",
                                cache_dir=str(tmp_path / "hf"))
    assert rej.num_rows == 12

    # a finished run with the same config returns its counts; another config needs new_run
    assert curate_stage(tmp_path / "verify", out, CONFIG.model_copy(update={"workers": 2})) == counts
    other = CurateConfig(language={"enabled": False}, decontam=CONFIG.decontam)
    with pytest.raises(StageConfigChanged, match="language.enabled"):
        curate_stage(tmp_path / "verify", out, other)
    curate_stage(tmp_path / "verify", out, other, new_run=True)
    again = json.loads((out / "funnel.json").read_text())
    assert again["filters"][2]["skipped"] == "disabled"
    # the mixed-language sample b1 now survives to dedupe, where its prompt ("Problem b: ...") is a near
    # duplicate of "Problem a: ..." (same text but for the id)
    assert again["filters"][-1]["dropped"] == {"exact_prompt": 2, "near_prompt": 1, "exact_response": 1}


def outputs(out):
    return {p.relative_to(out).as_posix(): read(p) for p in sorted(out.rglob("part-*.parquet"))}


def test_workers_and_resume_give_identical_outputs(tmp_path):
    write_corpus(tmp_path)
    ref = tmp_path / "ref"
    curate_stage(tmp_path / "verify", ref, CONFIG)
    par = tmp_path / "par"
    curate_stage(tmp_path / "verify", par, CONFIG, workers=2)
    assert outputs(par) == outputs(ref)
    # a crash in the dedupe pass after unit 0 was committed: later units, funnel and counts are not there yet
    res = tmp_path / "res"
    curate_stage(tmp_path / "verify", res, CONFIG.model_copy(update={"keep_work": True}))
    for p in ["counts.json", "funnel.json", "part-00001.parquet", "part-00002.parquet", "rejected/part-00001.parquet",
              "rejected/part-00002.parquet", "_filter/counts.json", "_filter/part-00002.parquet"]:
        (res / p).unlink(missing_ok=True)
    for ledger in (res / "ledger.jsonl", res / "_filter" / "ledger.jsonl"):
        lines = [json.loads(x) for x in ledger.read_text().splitlines()]
        keep = {0} if ledger.parent == res else {0, 1}
        ledger.write_text("".join(json.dumps(e) + "\n" for e in lines if e["unit"] in keep))
    counts = curate_stage(tmp_path / "verify", res, CONFIG)
    assert counts["records_out"] == 4 and outputs(res) == outputs(ref)


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    """A real subprocess killed with SIGKILL mid-run (filter pass, then dedupe pass); the resumed run's outputs
    equal an uninterrupted run's."""
    rng = random.Random(11)
    shards = [[trace(f"s{s}-{p}", i, problem=f"Shard {s} prompt {p}: {synthetic_cot(rng, 40)}",
                     reasoning=synthetic_cot(rng, 3000)) for p in range(2) for i in range(3)] for s in range(8)]
    write_stage(tmp_path / "generate", shards)
    config = CurateConfig(dedupe={"near_prompts": {"enabled": False}})
    ref = tmp_path / "ref"
    curate_stage(tmp_path / "generate", ref, config)
    run = tmp_path / "run"
    code = ("import sys; from pathlib import Path; from factory.curate.filter_pass import CurateConfig; "
            "from factory.curate.stage import curate_stage; "
            f"curate_stage(Path({str(tmp_path / 'generate')!r}), Path({str(run)!r}), "
            f"CurateConfig.model_validate_json({config.model_dump_json()!r}))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for marker in (run / "_filter" / f"part-0000{rng.randint(1, 4)}.parquet",
                   run / f"part-0000{rng.randint(1, 4)}.parquet"):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run / "counts.json").exists(), "the run finished before it could be killed"
    curate_stage(tmp_path / "generate", run, config)
    assert outputs(run) == outputs(ref)
    assert json.loads((run / "funnel.json").read_text())["records_out"] == \
        json.loads((ref / "funnel.json").read_text())["records_out"]


def test_plain_traces_skip_selection(tmp_path):
    expected = write_corpus(tmp_path, with_rewards=False)
    curate_stage(resolve_input(tmp_path), tmp_path / "curate", CONFIG)
    funnel = json.loads((tmp_path / "curate" / "funnel.json").read_text())
    assert funnel["filters"][0] == {"name": "selection", "in": 16, "out": 16, "dropped": {},
                                    "skipped": "no reward columns (verification off)", "seconds": 0.0}
    assert funnel["records_out"] == 5 and len(expected) == 11
    kept = read(tmp_path / "curate" / "part-00000.parquet")
    assert kept[0]["reward_accuracy"] is None and kept[0]["selected"] is None


def test_missing_field_is_named(tmp_path):
    write_stage(tmp_path / "generate", [[trace("a", 0)]])
    table = pq.read_table(tmp_path / "generate" / "part-00000.parquet").drop_columns(["finish_reason"])
    pq.write_table(table, tmp_path / "generate" / "part-00000.parquet")
    with pytest.raises(MissingFieldError, match="'truncation' needs the field 'finish_reason'"):
        curate_stage(tmp_path / "generate", tmp_path / "curate", CurateConfig())
    table = table.drop_columns(["teacher"])
    pq.write_table(table, tmp_path / "generate" / "part-00000.parquet")
    with pytest.raises(MissingFieldError, match="part-00000.parquet: curate needs the field 'teacher'"):
        curate_stage(tmp_path / "generate", tmp_path / "curate2", CurateConfig())


def test_empty_input_is_refused(tmp_path):
    with pytest.raises(CurateError, match="empty input"):
        resolve_input(tmp_path)
    (tmp_path / "generate").mkdir()
    with pytest.raises(CurateError, match="no part-\\*.parquet shards"):
        curate_stage(tmp_path / "generate", tmp_path / "curate", CurateConfig())
    write_stage(tmp_path / "generate", [[]])
    with pytest.raises(CurateError, match="hold no records"):
        curate_stage(tmp_path / "generate", tmp_path / "curate", CurateConfig())


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="max_paragraph_word"):
        CurateConfig.model_validate({"readability": {"max_paragraph_word": 10}})
    with pytest.raises(ValueError, match="min_consistency"):
        CurateConfig.model_validate({"language": {"min_consistency": -0.1}})
    with pytest.raises(ValueError, match="languge"):
        CurateConfig.model_validate({"languge": {}})


def test_missing_benchmark_file_fails_before_any_work(tmp_path):
    write_corpus(tmp_path)
    config = CurateConfig(decontam={"benchmarks": [{"path": str(tmp_path / "aime25.jsonl")}]})
    with pytest.raises(ValueError, match="aime25.jsonl does not exist"):
        curate_stage(tmp_path / "verify", tmp_path / "curate", config)
    assert not list((tmp_path / "curate").rglob("*.parquet"))


def test_run_curate_pipeline_entry(tmp_path):
    """The pipeline calls `run_curate(cfg, DIR)`: it reads DIR/verify and writes DIR/curate with cfg.curate."""
    from types import SimpleNamespace

    from factory.curate.stage import run_curate

    write_corpus(tmp_path)
    counts = run_curate(SimpleNamespace(curate=CONFIG), tmp_path)
    assert counts["records_out"] == 4 and (tmp_path / "curate" / "funnel.json").exists()
    assert counts["extra"]["filters"]["selection"] == {"in": 16, "out": 15, "skipped": None}
    assert run_curate(CONFIG, tmp_path) == counts


def test_curate_reads_the_verify_stage(tmp_path):
    """generate (trace shards via the runner's StageDir) -> the real verify stage -> curate."""
    from factory.core.schema import load_schema
    from factory.core.shards import ShardResult, StageDir
    from factory.curate.stage import run_curate
    from factory.verify.stage import run_verify
    from factory.verify.verdicts import VerifyConfig

    gen = StageDir(tmp_path / "generate", "generate", load_schema("trace"))
    gen.prepare("fp", {}, {})
    rows = [trace("a", i, answer_text="So the count is $\\boxed{66}$." if i < 3 else "It is $\\boxed{65}$.")
            for i in range(4)]
    gen.commit_result(0, ShardResult(rows=rows))
    gen.finalize(records_in=4)
    verified = run_verify(VerifyConfig(), tmp_path)
    assert verified["records_out"] == 4
    counts = run_curate(CurateConfig(), tmp_path)
    kept = read(tmp_path / "curate" / "part-00000.parquet")
    assert counts["extra"]["filters"]["selection"]["skipped"] is None
    assert kept and all(r["reward_accuracy"] == 1.0 and r["selected"] for r in kept)
    assert {r["sample_idx"] for r in kept} <= {0, 1, 2} and kept[0]["reward_kind"] == "math"
    assert kept[0]["pass_rate"] == 0.75

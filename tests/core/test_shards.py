"""The shard runner: atomic commits, the ledger and its crash recovery, config-change refusal, schema versions,
and the process-pool map stage — on real Parquet files."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.core.schema import SchemaError, load_schema
from factory.core.executor import LocalExecutor, WorkUnit
from factory.core.runner import run_map_stage
from factory.core.shards import ShardResult, StageConfigChanged, StageDir, iter_stage_rows, read_part

TRACE = load_schema("trace")


def trace_row(pid: str, idx: int, **kw) -> dict:
    row = {"prompt_id": pid, "source": "t", "domain": "math", "problem": f"{pid}?", "answer": "1", "tests": None,
           "language": "en", "metadata": None, "sample_idx": idx, "teacher": "m", "sampling": "{}",
           "template": "chat", "prompt_text": "p", "completion": "<think>\nx\n</think>\n\n1", "reasoning": "x",
           "answer_text": "1", "think_closed": True, "finish_reason": "stop", "prompt_tokens": 3,
           "completion_tokens": 5, "latency_s": 0.1, "error": None}
    row.update(kw)
    return row


def make_stage(path, units=3, k=2, name="generate") -> StageDir:
    stage = StageDir(path / name, name, TRACE)
    stage.prepare("fp1", {"a": 1}, {"units": units})
    for u in range(units):
        stage.commit_result(u, ShardResult(rows=[trace_row(f"p{u}", i) for i in range(k)]))
    stage.finalize(records_in=units)
    return stage


def test_commit_writes_parts_ledger_manifest_counts(tmp_path):
    stage = make_stage(tmp_path)
    assert sorted(p.name for p in stage.path.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    counts = json.loads(stage.counts_path.read_text())
    assert (counts["records_in"], counts["records_out"], counts["units"]) == (3, 6, 3)
    ledger = [json.loads(line) for line in stage.ledger_path.read_text().splitlines()]
    assert ledger[1]["keys"] == [["p1", 0], ["p1", 1]]
    meta = pq.read_schema(stage.path / "part-00000.parquet").metadata
    assert meta[b"factory.schema"] == b"trace" and meta[b"factory.schema_version"] == b"1"
    assert len(list(iter_stage_rows(stage.path, "trace"))) == 6
    assert not list(stage.path.glob(".*tmp*"))


def test_torn_ledger_line_and_unledgered_part_are_recovered(tmp_path):
    stage = make_stage(tmp_path)
    lines = stage.ledger_path.read_text().splitlines()
    # a crash after renaming part 2 but while writing its ledger line
    stage.ledger_path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:17])
    (stage.path / ".part-00003.parquet.tmp-999").write_bytes(b"half a shard")
    stage.prepare("fp1", {"a": 1}, {"units": 3})
    entries = stage.ledger()
    assert sorted(entries) == [0, 1, 2] and entries[2]["recovered"] and entries[2]["keys"] == [["p2", 0], ["p2", 1]]
    assert not (stage.path / ".part-00003.parquet.tmp-999").exists()
    assert stage.finalize(records_in=3)["records_out"] == 6


def test_changed_config_is_refused_unless_new_run(tmp_path):
    stage = make_stage(tmp_path)
    with pytest.raises(StageConfigChanged, match=r"changed: a.*--new-run"):
        stage.prepare("fp2", {"a": 2}, {"units": 3})
    stage.prepare("fp2", {"a": 2}, {"units": 3}, new_run=True)
    assert not list(stage.path.glob("part-*")) and stage.ledger() == {}


def test_duplicate_keys_across_parts_are_caught(tmp_path):
    stage = make_stage(tmp_path)
    stage.commit_result(3, ShardResult(rows=[trace_row("p0", 0)]))
    with pytest.raises(RuntimeError, match="duplicated"):
        stage.finalize(records_in=4)


def test_missing_field_and_unknown_schema_version(tmp_path):
    stage = StageDir(tmp_path / "s", "s", TRACE)
    stage.prepare("f", {}, {})
    with pytest.raises(SchemaError, match="'completion' is missing in record 0"):
        stage.commit_result(0, ShardResult(rows=[{k: v for k, v in trace_row("p", 0).items() if k != "completion"}]))
    assert not list(stage.path.glob("part-*"))
    table = TRACE.table([trace_row("p", 0)])
    future = table.replace_schema_metadata({b"factory.schema": b"trace", b"factory.schema_version": b"99"})
    pq.write_table(future, tmp_path / "future.parquet")
    with pytest.raises(SchemaError, match="version 99 is not the version this factory reads"):
        read_part(tmp_path / "future.parquet", "trace")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(SchemaError, match="no factory schema version"):
        read_part(tmp_path / "plain.parquet")


def drop_odd(rows: list[dict]) -> ShardResult:
    keep = [r for r in rows if r["sample_idx"] % 2 == 0]
    rejected = [r for r in rows if r["sample_idx"] % 2 == 1]
    return ShardResult(rows=keep, rejected=rejected, dropped={"odd": len(rejected)})


@pytest.mark.parametrize("workers", [1, 2])
def test_map_stage_in_a_process_pool_resumes(tmp_path, workers):
    make_stage(tmp_path, units=4, k=4)
    kwargs = dict(name="verify", in_dir=tmp_path / "generate", out_dir=tmp_path / "verify", out_schema=TRACE,
                  fn=drop_odd, config={"policy": "even"}, in_schema="trace", workers=workers)
    counts = run_map_stage(**kwargs)
    assert (counts["records_in"], counts["records_out"], counts["rejected"]) == (16, 8, 8)
    assert counts["dropped"] == {"odd": 8}
    # lose one committed unit, as if the run had died before it: the rerun redoes exactly that one
    (tmp_path / "verify" / "part-00002.parquet").unlink()
    lines = (tmp_path / "verify" / "ledger.jsonl").read_text().splitlines()
    (tmp_path / "verify" / "ledger.jsonl").write_text("".join(l + "\n" for l in lines if '"unit": 2' not in l))
    assert run_map_stage(**kwargs)["records_out"] == 8
    rows = list(iter_stage_rows(tmp_path / "verify", "trace"))
    assert sorted((r["prompt_id"], r["sample_idx"]) for r in rows) == [(f"p{u}", i) for u in range(4) for i in (0, 2)]
    with pytest.raises(StageConfigChanged):
        run_map_stage(**{**kwargs, "config": {"policy": "other"}})


def test_map_stage_refuses_an_unfinished_input(tmp_path):
    stage = StageDir(tmp_path / "generate", "generate", TRACE)
    stage.prepare("f", {}, {})
    with pytest.raises(RuntimeError, match="has not finished"):
        run_map_stage(name="verify", in_dir=stage.path, out_dir=tmp_path / "v", out_schema=TRACE, fn=drop_odd,
                      config={})


class ReversedExecutor:
    """An executor that runs units in another order and in another process (pickled, as a cluster would)."""

    def __init__(self):
        self.seen: list[int] = []

    def run(self, units):
        import pickle

        for unit in reversed(list(units)):
            self.seen.append(unit.index)
            yield unit.index, pickle.loads(pickle.dumps(unit))()


def test_map_stage_output_does_not_depend_on_the_executor(tmp_path):
    make_stage(tmp_path, units=3, k=2)
    common = dict(in_dir=tmp_path / "generate", out_schema=TRACE, fn=drop_odd, config={}, in_schema="trace")
    local = run_map_stage(name="verify", out_dir=tmp_path / "local", executor=LocalExecutor(1), **common)
    executor = ReversedExecutor()
    other = run_map_stage(name="verify", out_dir=tmp_path / "other", executor=executor, **common)
    assert executor.seen == [2, 1, 0]
    assert {k: v for k, v in local.items()} == {k: v for k, v in other.items()}
    for part in sorted((tmp_path / "local").glob("part-*.parquet")):
        assert pq.read_table(part).equals(pq.read_table(tmp_path / "other" / part.name))
    assert list(ReversedExecutor().run([])) == [] and WorkUnit(0, len, ([1, 2],))() == 2

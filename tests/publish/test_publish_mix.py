"""`factory publish` of a mixture: DIR/mix (built by the real `run_mix` from real curated shards) resharded row for
row, its card's "Mixture" section, `source: curate` still publishing DIR/curate, an unfinished or altered mixture
refused naming the folder, and DIR/publish's writer lock refusing a second publish from the CLI."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from publish_fixtures import curated_row, write_shard

import factory.core.schema as fschema
from factory.core.lock import stage_lock
from factory.mix.config import MixConfig
from factory.mix.stage import run_mix
from factory.publish.common import PublishError
from factory.publish.stage import PublishConfig, run_publish

REPO = Path(__file__).resolve().parents[2]


def _curate(run: Path, source: str, n: int, domains: tuple[str, ...]) -> Path:
    """DIR/curate as the curate stage leaves it: two real `curated` shards and counts.json."""
    rows = [{**curated_row(i, domains[i % len(domains)], source),
             "track": "non_reasoning" if domains[i % len(domains)] == "general" else "reasoning"} for i in range(n)]
    write_shard(run / "curate" / "part-00000.parquet", "curated", rows[: n // 2])
    write_shard(run / "curate" / "part-00001.parquet", "curated", rows[n // 2:])
    (run / "curate" / "counts.json").write_text(json.dumps({"stage": "curate", "records_in": n, "records_out": n}))
    return run / "curate"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A run whose own curate/ (math + code) is mixed with another run's general track by the real mix stage."""
    fschema.load_schema.cache_clear()  # other publish tests swap in stand-in schemas; these are the real ones
    root = tmp_path_factory.mktemp("mixpub")
    run = root / "mixrun"
    _curate(run, "numina", 20, ("math", "code"))
    chat = _curate(root / "chat", "alpaca", 12, ("general",))
    cfg = MixConfig(sources=[{"name": "reasoning", "count": 14}, {"name": "general", "path": str(chat), "count": 6}],
                    seed=7, shard_rows=8)
    assert run_mix(cfg, run)["records_out"] == 20
    assert len(list((run / "mix").glob("part-*.parquet"))) == 3
    return run


@pytest.fixture
def run(built, tmp_path) -> Path:
    fschema.load_schema.cache_clear()
    copy = tmp_path / "mixrun"
    shutil.copytree(built, copy)
    return copy


def _rows(files: list[Path]) -> list[dict]:
    key = lambda r: (r["mix_component"], r["mix_file"], r["mix_row"])  # noqa: E731  (unique: no upsampling)
    return sorted((r for f in files for r in pq.read_table(f).to_pylist()), key=key)


def test_auto_publishes_the_mixture_row_for_row_with_its_section(run, built):
    result = run_publish(PublishConfig(), run, "org/mix", dry_run=True)
    build, folder = result.dataset, run / "publish" / "dataset"
    mixed = _rows(sorted((run / "mix").glob("part-*.parquet")))
    domains = Counter(r["domain"] for r in mixed)
    assert build.source == "mix" and build.schema.name == "mixed" and build.records_in == 20
    assert build.configs == {**domains, "all": 20} and set(domains) == {"math", "code", "general"}
    published = sorted(folder.glob("data/*/train-*.parquet"))
    assert pq.read_schema(published[0]).names == pq.read_schema(run / "mix" / "part-00000.parquet").names
    assert pq.read_schema(published[0]).metadata[fschema.META_NAME] == b"mixed"
    assert _rows(published) == mixed  # every row and column of DIR/mix, each once
    assert datasets.load_dataset(str(folder), split="train").num_rows == 20
    counts = json.loads((run / "publish" / "counts.json").read_text())
    assert counts["extra"]["source"] == "mix" and counts["records_out"] == 20

    card = build.card_text
    assert "## Mixture" in card and "seed 7" in card and "`mix_row` (the row in that file, 0-based)" in card
    assert card.index("## Mixture") < card.index("## Where the samples came from")
    reasoning = Counter(r["domain"] for r in mixed if r["mix_component"] == "reasoning")
    assert f"| reasoning | mixrun | `{built / 'curate'}` |  | count 14 | 20 | 14 | 70.00% | 0 |" in card
    assert "| general | chat | `" in card and "|  | count 6 | 12 | 6 | 30.00% | 0 |" in card
    row = ", ".join(f"{d} {n}" for d, n in reasoning.most_common())
    assert f"| reasoning | {row} | reasoning 14 |" in card
    assert "| general | general 6 | non_reasoning 6 |" in card
    assert "| mix | 32 | 20 |" in card  # the mix stage's counts in the per-stage table
    assert "records of schema `mixed` v1" in card


def test_source_curate_still_publishes_the_curated_set(run):
    result = run_publish(PublishConfig.model_validate({"dataset": {"source": "curate"}}), run, "org/cur",
                         dry_run=True)
    build = result.dataset
    assert build.source == "curate" and build.schema.name == "curated"
    assert build.configs == {"code": 10, "math": 10, "all": 20}
    assert "## Mixture" not in build.card_text and "mix_component" not in build.card_text
    published = sorted((run / "publish" / "dataset").glob("data/*/train-*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in published) == 20
    assert "mix_component" not in pq.read_schema(published[0]).names


@pytest.mark.parametrize(("damage", "dataset", "match"), [
    ("counts.json", {}, r"RUN/mix: the mixture is unfinished \(no counts.json\); rebuild it with `factory mix "
                        r"--config PIPELINE.yaml --out RUN --new-run`"),
    ("counts.json", {"source": "mix"}, r"RUN/mix: the mixture is unfinished \(no counts.json\)"),
    ("manifest.json", {}, r"RUN/mix: the mixture is unfinished \(no manifest.json\)"),
    ("part-00001.parquet", {}, r"RUN/mix: the shards hold 1\d rows .* but counts.json records 20 .*changed after"),
    ("", {"include_rejected": True}, r"include_rejected: a mixture \(RUN/mix\) has no rejected samples"),
    (".", {"source": "mix"}, r"RUN/mix: no mixture in this run .*`factory mix --config PIPELINE.yaml --out RUN`"),
])
def test_unfinished_or_altered_mixture_is_refused_naming_the_folder(run, damage, dataset, match):
    target = (run / "mix" / damage).resolve()  # "." : the whole mixture
    if damage:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(PublishError, match=match.replace("RUN", re.escape(str(run)))):
        run_publish(PublishConfig.model_validate({"dataset": dataset}), run, "org/mix", dry_run=True)
    assert not (run / "publish").exists(), "nothing was built"


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_second_publish_is_refused_while_one_holds_the_lock(run):
    pipeline = run / "pipeline.yaml"
    pipeline.write_text("name: mixrun\nmix:\n  sources:\n    - {name: reasoning, count: 14}\n"
                        "publish:\n  dataset: {source: mix}\n")
    run_publish(PublishConfig(), run, "org/mix", dry_run=True)
    before = _snapshot(run / "publish")
    assert any(k.startswith("dataset/data/") for k in before)
    cmd = [sys.executable, "-m", "factory.cli", "publish", "--config", str(pipeline), "--out", str(run), "--dry-run"]
    with stage_lock(run / "publish"):  # this test process is the publish in progress
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        err = " ".join(proc.stderr.split())
        assert f"{run / 'publish'} is being written by another factory process (pid {os.getpid()} on host" in err
        assert "Traceback" not in proc.stderr and "would upload" not in proc.stdout
        assert _snapshot(run / "publish") == before, "the refused publish changed DIR/publish"
    assert not (run / "publish" / ".lock").exists()  # released: the next publish goes ahead
    assert run_publish(PublishConfig(), run, "org/mix", dry_run=True).dataset.source == "mix"

"""The dataset repo folder: resharded Parquet per config, loadable with `datasets`, a card that validates and says
where every sample came from; bad input refused with the file named and nothing half-written."""
from __future__ import annotations

import re

import datasets
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from publish_fixtures import curated_row, make_run, use_fixture_schemas, write_shard
from pydantic import ValidationError

from factory.publish.cards import validate_dataset_card
from factory.publish.common import PublishError
from factory.publish.dataset import DatasetPublishConfig, build_dataset_folder

SHARD = re.compile(r"^(train|rejected)-(\d{5})-of-(\d{5})\.parquet$")


@pytest.fixture
def run(tmp_path, monkeypatch):
    use_fixture_schemas(monkeypatch, tmp_path)
    return make_run(tmp_path / "run")


def _all_rows(run):
    return pq.read_table(sorted((run / "curate").glob("part-*.parquet"))).to_pylist()


def test_folder_loads_into_domain_configs_all_and_rejected(run, tmp_path):
    folder = run / "publish" / "dataset"
    build = build_dataset_folder(run, folder, DatasetPublishConfig(include_rejected=True, shard_size_mb=0.0005),
                                 "org/r1-demo")
    rows = _all_rows(run)
    assert build.configs == {"math": 30, "code": 12, "all": 42, "rejected": 5}
    expected = datasets.Features({
        "prompt_id": datasets.Value("string"), "sample_idx": datasets.Value("int32"),
        "source": datasets.Value("string"), "domain": datasets.Value("string"), "problem": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "num_tokens": datasets.Value("int32"), "teacher": datasets.Value("string"),
        "reward_accuracy": datasets.Value("float64"), "reward_format": datasets.Value("float64"),
    })
    for name, n in (("math", 30), ("code", 12), ("all", 42)):
        ds = datasets.load_dataset(str(folder), name, split="train")
        assert ds.num_rows == n
        assert ds.features == expected
        if name != "all":
            assert set(ds["domain"]) == {name}
    # `all` holds exactly the curated samples, each once, messages intact.
    everything = datasets.load_dataset(str(folder), split="train")  # the default config
    assert everything.num_rows == 42
    key = lambda r: (r["prompt_id"], r["sample_idx"])  # noqa: E731
    assert sorted(map(key, everything)) == sorted(map(key, rows))
    by_key = {key(r): r for r in rows}
    assert all(r["messages"] == by_key[key(r)]["messages"] for r in everything)
    rejected = datasets.load_dataset(str(folder), "rejected", split="rejected")
    assert rejected.num_rows == 5 and "reject_reason" in rejected.features
    # Shards are named train-XXXXX-of-YYYYY with YYYYY the real count, and carry the schema version as lineage.
    for sub in ("math", "code", "rejected"):
        names = sorted(p.name for p in (folder / "data" / sub).iterdir())
        assert len(names) > 1, "the tiny target size must split each config into several shards"
        assert all(SHARD.match(n) and int(SHARD.match(n)[3]) == len(names) for n in names)
        assert [int(SHARD.match(n)[2]) for n in names] == list(range(len(names)))
        meta = pq.read_schema(folder / "data" / sub / names[0]).metadata
        assert meta[b"factory.schema"] in (b"curated", b"curated_rejected")
    assert not (folder / "data" / "all").exists(), "`all` reads the domain shards; nothing is stored twice"
    assert not list(folder.parent.glob(".*")), "no scratch folder left behind"


def test_shard_size_sets_shard_count_and_rebuild_is_byte_identical(run):
    folder = run / "publish" / "dataset"
    build_dataset_folder(run, folder, DatasetPublishConfig(shard_size_mb=500), "org/r1-demo")
    assert sorted(p.name for p in (folder / "data" / "math").iterdir()) == ["train-00000-of-00001.parquet"]
    build_dataset_folder(run, folder, DatasetPublishConfig(shard_size_mb=0.001), "org/r1-demo")
    math = sorted((folder / "data" / "math").iterdir())
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in math]
    assert len(math) > 2 and sum(sizes) == 30 and max(sizes) - min(sizes) <= 1  # rows spread evenly
    first = {p.name: p.read_bytes() for p in math}
    build_dataset_folder(run, folder, DatasetPublishConfig(shard_size_mb=0.001), "org/r1-demo")
    # Same input, same bytes: a rerun after an interrupted upload sends nothing new.
    assert {p.name: p.read_bytes() for p in sorted((folder / "data" / "math").iterdir())} == first


def test_card_metadata_validates_and_prose_covers_provenance(run):
    folder = run / "publish" / "dataset"
    build_dataset_folder(run, folder, DatasetPublishConfig(include_rejected=True, license="cc-by-4.0"),
                         "org/r1-demo", model_repo_id="org/r1-student")
    text = (folder / "README.md").read_text()
    card = DatasetCard.load(folder / "README.md")
    validate_dataset_card(text)
    data = card.data
    assert data.license == "cc-by-4.0" and data.size_categories == "n<1K"
    assert data.task_categories == ["text-generation"] and "reasoning" in data.tags
    assert [c["config_name"] for c in data["configs"]] == ["all", "code", "math", "rejected"]
    assert next(c for c in data["configs"] if c["config_name"] == "all")["default"] is True
    info = {i["config_name"]: i for i in data["dataset_info"]}
    assert info["all"]["splits"] == [{"name": "train", "num_bytes": info["all"]["dataset_size"], "num_examples": 42}]
    assert {f["name"] for f in info["math"]["features"]} >= {"messages", "prompt_id", "reward_accuracy"}
    body = card.text
    # prompt sources with counts per config, the teacher and its sampling parameters
    assert re.search(r"\| numina \| 0 \| 16 \|", body) and re.search(r"\| apps \| 12 \| 0 \|", body)
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in body and "| temperature | 0.6 |" in body
    # rewards, selection policy, every filter with its threshold, the funnel counts
    assert "math-verify" in body and "all_correct" in body
    assert "| language_consistency | 45 | 42 | 0.95 |" in body and "16,384" in body
    # decontamination: benchmarks checked and prompts removed
    assert "math500" in body and "| math500 | 2 |" in body and "ngram" in body
    # rejected split with reasons, schema with docs, loading and training instructions
    assert "| too_long | 3 |" in body and "| language_mixed | 2 |" in body
    assert "| `messages` |" in body and "the chat: user prompt, assistant reply with &lt;think&gt;" in body
    assert 'load_dataset("org/r1-demo", "all", split="train")' in body and "SFTTrainer" in body
    assert "factory sft" in body and "org/r1-student" in body
    # an OpenAI-compatible teacher's api_key in the generate manifest never reaches the card
    assert "sk-local" not in text and "[redacted]" in text


def test_selected_columns_only_and_split_by_none(run):
    folder = run / "publish" / "dataset"
    cfg = DatasetPublishConfig(columns=["prompt_id", "messages"], split_by=None)
    build = build_dataset_folder(run, folder, cfg, "org/r1-demo")
    assert build.configs == {"all": 42}
    ds = datasets.load_dataset(str(folder), "all", split="train")
    assert ds.column_names == ["prompt_id", "messages"]
    # the domain column drives the configs even when it is not published
    cfg = DatasetPublishConfig(columns=["prompt_id", "messages"])
    build = build_dataset_folder(run, folder, cfg, "org/r1-demo")
    assert build.configs == {"code": 12, "math": 30, "all": 42}
    assert datasets.load_dataset(str(folder), "code", split="train").column_names == ["prompt_id", "messages"]


@pytest.mark.parametrize("columns, message", [
    (["prompt_id", "nope"], r"\['nope'\] are not columns"),
    (["prompt_id", "domain"], "the `messages` column is required"),
])
def test_bad_columns_are_named(run, columns, message):
    with pytest.raises(PublishError, match=message):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(columns=columns), "org/x")


def _assert_nothing_written(run):
    assert not (run / "publish").exists() or not any((run / "publish").iterdir())


def test_empty_dataset_is_refused(tmp_path, monkeypatch):
    use_fixture_schemas(monkeypatch, tmp_path)
    run = tmp_path / "run"
    (run / "curate").mkdir(parents=True)
    with pytest.raises(PublishError, match=r"curate: no part-\*\.parquet shards; nothing to publish"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")
    write_shard(run / "curate" / "part-00000.parquet", "curated", [])
    with pytest.raises(PublishError, match=r"curate: the stage has not finished \(no counts\.json\)"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")
    (run / "curate" / "counts.json").write_text('{"stage": "curate", "records_in": 0, "records_out": 0}')
    with pytest.raises(PublishError, match="the shards hold no rows; nothing to publish"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")
    _assert_nothing_written(run)


def test_shard_without_schema_version_is_refused(run):
    write_shard(run / "curate" / "part-00002.parquet", "curated", [curated_row(99, "math", "x")], metadata=False)
    with pytest.raises(PublishError, match=r"part-00002\.parquet: no factory schema version"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")
    _assert_nothing_written(run)


def test_mixed_schema_versions_are_refused(run):
    write_shard(run / "curate" / "part-00002.parquet", "curated", [curated_row(99, "math", "x")], version=2)
    with pytest.raises(PublishError, match=r"mixed schemas/versions \(curated v1: 2 shard\(s\).*curated v2: 1"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")
    _assert_nothing_written(run)


def test_unknown_version_and_wrong_schema_are_refused(run, tmp_path):
    for path in (run / "curate").glob("part-*.parquet"):
        rows = pq.read_table(path).to_pylist()
        write_shard(path, "curated", rows, version=7)
    with pytest.raises(PublishError, match="version 7 is not the version this factory reads"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")
    with pytest.raises(PublishError, match="holds 'curated' records, expected 'trace'"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(schema_name="trace"), "org/x")


def test_missing_rejected_shards_when_asked(run):
    for path in (run / "curate" / "rejected").glob("*.parquet"):
        path.unlink()
    with pytest.raises(PublishError, match="rejected: no part-.*include_rejected is true"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(include_rejected=True), "org/x")
    _assert_nothing_written(run)


def test_broken_funnel_json_names_the_file(run):
    (run / "curate" / "funnel.json").write_text('{"records_in": 3,\n oops}')
    with pytest.raises(PublishError, match=r"funnel\.json: line 2: not valid JSON"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError, match="shard_size"):
        DatasetPublishConfig.model_validate({"shard_size": 10})
    with pytest.raises(ValidationError, match="shard_size_mb"):
        DatasetPublishConfig(shard_size_mb=0)
    with pytest.raises(ValidationError, match="not a Hub license identifier"):
        DatasetPublishConfig(license="Apache 2")
    with pytest.raises(ValidationError, match="not Hub text tasks"):
        DatasetPublishConfig(task_categories=["reasoning"])


def test_card_validation_catches_bad_metadata(run):
    folder = run / "publish" / "dataset"
    text = build_dataset_folder(run, folder, DatasetPublishConfig(), "org/r1-demo").card_text
    with pytest.raises(PublishError, match="size_categories"):
        validate_dataset_card(text.replace("size_categories: n<1K", "size_categories: tiny"))
    with pytest.raises(PublishError, match="license 'apache2'"):
        validate_dataset_card(text.replace("license: apache-2.0", "license: apache2"))
    with pytest.raises(PublishError, match="no `configs`"):
        validate_dataset_card("# just prose\n")
    with pytest.raises(PublishError, match="data_files"):
        validate_dataset_card(text.replace("- split: train\n", "- split: train-bad\n", 1))


def test_row_groups_are_full_even_when_batches_split_across_configs(run):
    folder = run / "publish" / "dataset"
    build_dataset_folder(run, folder, DatasetPublishConfig(row_group_rows=8), "org/r1-demo")
    md = pq.ParquetFile(folder / "data" / "math" / "train-00000-of-00001.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [8, 8, 8, 6]


def test_domain_named_like_a_reserved_config_is_refused(run):
    write_shard(run / "curate" / "part-00002.parquet", "curated", [curated_row(99, "all", "x")])
    with pytest.raises(PublishError, match="'domain' value 'all' collides with the reserved config"):
        build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/x")


def test_bare_run_folder_still_gets_an_honest_card(run):
    # Only the curated shards and their counts: no manifests, no funnel, no rejected rows.
    for stage in ("generate", "verify"):
        (run / stage / "manifest.json").unlink()
    (run / "curate" / "manifest.json").unlink()
    (run / "curate" / "funnel.json").unlink()
    build = build_dataset_folder(run, run / "publish" / "dataset", DatasetPublishConfig(), "org/r1-demo")
    validate_dataset_card(build.card_text)
    assert "No `generate/manifest.json` was found" in build.card_text
    assert "No `curate/manifest.json` was found" in build.card_text
    assert "This run recorded no decontamination step" in build.card_text

"""The labelled set of CoT snippets (tests/curate/data/language_cots.jsonl): the filter agrees with >= 95%."""
import json
from pathlib import Path

import pytest

from factory.curate.config import LanguageConfig
from factory.curate.filters.language import consistency_for

DATA = Path(__file__).parent / "data" / "language_cots.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def _agreement(config: LanguageConfig) -> tuple[int, list[str]]:
    misses = [r["id"] for r in ROWS
              if (consistency_for(r["text"], r["target"], config) >= config.min_consistency)
              != (r["label"] == "consistent")]
    return len(ROWS) - len(misses), misses


def test_the_set_is_labelled_and_covers_the_categories():
    assert len(ROWS) >= 60 and len({r["id"] for r in ROWS}) == len(ROWS)
    assert all(r["label"] in ("consistent", "mixed") and r["why"] and r["target"] for r in ROWS)
    mixed = sum(r["label"] == "mixed" for r in ROWS)
    assert 0.3 * len(ROWS) <= mixed <= 0.6 * len(ROWS)
    ids = " ".join(r["id"] for r in ROWS)
    for part in ("en-intj", "en-quote", "en-code", "mix-zhen", "mix-jaen", "mix-koen", "mix-ruen", "zh-", "ko-"):
        assert part in ids, part


def test_agreement_on_the_set_is_at_least_95_percent():
    ok, misses = _agreement(LanguageConfig())
    assert ok / len(ROWS) >= 0.95, misses


def test_the_old_method_is_still_callable_and_worse():
    old, _ = _agreement(LanguageConfig(method="segments"))
    new, _ = _agreement(LanguageConfig())
    assert old < new


@pytest.mark.parametrize("row", [r for r in ROWS if r["id"].startswith(("en-intj", "en-quote"))], ids=lambda r: r["id"])
def test_interjections_and_quoted_names_keep_an_english_cot(row):
    assert consistency_for(row["text"], "en", LanguageConfig()) >= 0.9

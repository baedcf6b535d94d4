"""Repetition: n-gram repeats, looped lines, compression ratio catch degenerate loops; healthy traces pass."""
import random

import pytest

from _curate_data import cot, synthetic_cot, trace
from factory.curate.filters import RepetitionConfig, RepetitionFilter
from factory.curate.filters.repetition import compression_ratio, max_line_repeats, repeated_ngram_ratio


def test_three_paragraph_loop_repeated_40_times_is_caught():
    paragraphs = cot().split("\n\n")
    loop = "\n\n".join(paragraphs[:2]) + "\n\n" + "\n\n".join(paragraphs[2:5] * 40)
    keep, reason, m = RepetitionFilter().check(trace(reasoning=loop))
    assert not keep and reason.startswith("repeated_ngram_ratio>")
    assert m["repeated_ngram_ratio"] > 0.9 and m["max_line_repeats"] == 40 and m["compression_ratio"] > 10


def test_each_signal_alone_catches_the_loop():
    paragraphs = cot().split("\n\n")
    loop = "\n\n".join(paragraphs[2:5] * 40)
    only_lines = RepetitionConfig(max_repeated_ngram_ratio=1.0, max_compression_ratio=1000)
    assert RepetitionFilter(only_lines).check(trace(reasoning=loop))[1] == "line_repeats>16"
    only_zlib = RepetitionConfig(max_repeated_ngram_ratio=1.0, max_line_repeats=10**6)
    assert RepetitionFilter(only_zlib).check(trace(reasoning=loop))[1] == "compression_ratio>6"


def test_loop_without_line_breaks_is_caught():
    loop = " ".join(["Wait, so the answer is 66 because two thirds of 99 is 66, let me check that again."] * 60)
    keep, reason, m = RepetitionFilter().check(trace(reasoning=loop))
    assert not keep and m["max_line_repeats"] == 1


def test_healthy_long_trace_passes():
    text = synthetic_cot(random.Random(7))  # ~3.7k words, R1 length
    keep, reason, m = RepetitionFilter().check(trace(reasoning=text))
    assert keep, (reason, m)
    assert m["repeated_ngram_ratio"] < 0.3 and m["compression_ratio"] < 6


def test_metric_values():
    assert repeated_ngram_ratio("a b c d e f g h i j k l", 3) == 0.0
    assert repeated_ngram_ratio(" ".join(["x y z w"] * 10), 4) == pytest.approx(1 - 4 / 37)
    assert max_line_repeats("short\nshort\nshort", 20) == 0
    assert compression_ratio("abc", min_chars=1000) == 1.0

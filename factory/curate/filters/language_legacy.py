"""The language-consistency algorithm before script runs (`LanguageConfig(method="segments")`), kept callable so
the bench and tests measure old and new side by side.

Words of CJK scripts are counted one per character. The rest of the text is cut into sentences, short sentences
are merged into segments of at least `min_segment_words` words, and the model labels each segment; every word of
a segment counts for its label. Digits, symbols, LaTeX commands and code are not words; a segment of one-letter
words only (math variables) is not judged. Known faults: merged interjections ("Hmm, wait. Wait.") read as
French, and a quoted Han name in an English sentence counts as foreign words.
"""
from __future__ import annotations

from factory.curate.filters.language_lid import identify
from factory.curate.filters.language_scripts import (
    CJK_RUN_RE,
    CODE_RE,
    HAN_RE,
    HANGUL_RE,
    KANA_RE,
    LATEX_CMD_RE,
)

# Sentence ends become line breaks, digits and symbols become spaces: one str.translate pass.
_SENTENCE_ENDS = ".!?;:\u3002\uff01\uff1f\uff1b"
_NOT_WORDS = ("0123456789$\\{}()[]^_=+-*/,<>|~`@#%&\"'\u00b0\u00b1\u00b7\u00d7\u00f7\u2013\u2014\u2018\u2019"
              "\u201c\u201d\u2026\u2192\u2190\u2194\u21d2\u2200\u2203\u2208\u2211\u221a\u221e\u2248\u2260"
              "\u2264\u2265\u2261\u22c5\u03c0\uff0c\u3001")
_SEGMENT_TABLE = str.maketrans({**{c: " " for c in _NOT_WORDS}, **{c: "\n" for c in _SENTENCE_ENDS}})


def cjk_counts(text: str, target: str) -> tuple[int, int]:
    """(target words, all words) among CJK characters, one word per character."""
    han = len(HAN_RE.findall(text))
    kana = len(KANA_RE.findall(text))
    hangul = len(HANGUL_RE.findall(text))
    total = han + kana + hangul
    hits = {"zh": han, "ja": han + kana, "ko": hangul}.get(target, 0)
    return hits, total


def _lid_text(words: list[str], limit: int) -> str:
    """The first `limit` words longer than one letter ("" for a segment of one-letter words only)."""
    return " ".join([w for w in words if len(w) > 1][:limit])


def segments_of(text: str, min_words: int, lid_words: int = 10**9) -> list[tuple[str, int]]:
    """Non-CJK text cut at sentence ends into (text to identify, word count) segments of >= min_words words;
    a short sentence joins the next one, a short tail the previous segment."""
    out: list[tuple[str, int]] = []
    buf: list[str] = []
    for line in text.translate(_SEGMENT_TABLE).split("\n"):
        words = line.split()
        if not words:
            continue
        buf += words
        if len(buf) >= min_words:
            out.append((_lid_text(buf, lid_words), len(buf)))
            buf = []
    if buf:
        if out:
            prev, n = out.pop()
            out.append((prev, n + len(buf)))
        else:
            out.append((_lid_text(buf, lid_words), len(buf)))
    return out


def legacy_consistency(text: str, target: str, min_segment_words: int = 5, min_confidence: float = 0.0,
                       lid_words: int = 8) -> tuple[float, int]:
    """(share of target-language words, number of words judged) by merged segments; 1.0 when no words."""
    target_words = total = 0
    if "`" in text:
        text = CODE_RE.sub(" ", text)
    if not text.isascii():
        target_words, total = cjk_counts(text, target)
        if total:
            text = CJK_RUN_RE.sub(" ", text)
    text = LATEX_CMD_RE.sub(" ", text)
    segs = [(s, n) for s, n in segments_of(text, min_segment_words, lid_words) if s]
    for (_, n), lang in zip(segs, identify([s for s, _ in segs], min_confidence)):
        if lang is None:
            continue
        total += n
        if lang == target:
            target_words += n
    return (target_words / total if total else 1.0), total

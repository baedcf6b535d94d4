"""Readability of a trace, as the R1 paper's SFT data required: no walls of text, no code blocks in the CoT of a
non-code prompt, little markdown/HTML debris, a reader-facing reply after </think>, and a sane length."""
from __future__ import annotations

import re

from factory.curate.config import ReadabilityConfig  # noqa: F401
from factory.curate.filters.base import FilterOutcome, RecordFilter

PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t]*\n")
FENCE_RE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)
# HTML by tag name with only name="value" attributes, so that comparisons such as "a<b and c>d" are not tags.
HTML_TAG_RE = re.compile(
    r"</?(?:a|b|i|u|p|br|hr|em|strong|span|div|img|table|thead|tbody|tr|td|th|ul|ol|li|h[1-6]|pre|code|sup|sub|"
    r"font|html|head|body|script|style|blockquote|center|small|big|iframe)"
    r"(?:\s+[\w:-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s<>]+))*\s*/?>", re.IGNORECASE)
# Markdown structure lines: headings, table rows and rules, images, horizontal rules.
MARKDOWN_LINE_RE = re.compile(r"^[ \t]*(?:#{1,6}[ \t]|\|.*\||!\[[^\]]*\]\(|(?:-{3,}|\*{3,}|_{3,})[ \t]*$)",
                              re.MULTILINE)
ANSWER_TAG_RE = re.compile(r"</?answer>", re.IGNORECASE)


def longest_paragraph_words(text: str) -> int:
    return max((len(p.split()) for p in PARAGRAPH_SPLIT_RE.split(text)), default=0)


def code_block_count(text: str) -> int:
    """Fenced code blocks (an unclosed fence counts as one)."""
    return (len(FENCE_RE.findall(text)) + 1) // 2


def markup_ratio(text: str) -> float:
    """(HTML tags + markdown structure lines) per line, capped at 1."""
    tags = len(HTML_TAG_RE.findall(text)) if "<" in text else 0
    return min(1.0, (tags + len(MARKDOWN_LINE_RE.findall(text))) / (text.count("\n") + 1))


class ReadabilityFilter(RecordFilter):
    name = "readability"
    requires = ("reasoning", "answer_text", "domain", "completion_tokens")

    def __init__(self, config: ReadabilityConfig | None = None):
        self.config = config or ReadabilityConfig()

    def check(self, record: dict) -> FilterOutcome:
        c = self.config
        cot = record["reasoning"] or ""
        metrics = {"longest_paragraph_words": longest_paragraph_words(cot),
                   "code_blocks": code_block_count(cot) if "```" in cot or "~~~" in cot else 0,
                   "markup_ratio": round(markup_ratio(cot), 4)}
        tokens = record["completion_tokens"]
        if tokens < c.min_tokens:
            return False, f"tokens<{c.min_tokens}", metrics
        if c.max_tokens is not None and tokens > c.max_tokens:
            return False, f"tokens>{c.max_tokens}", metrics
        if metrics["longest_paragraph_words"] > c.max_paragraph_words:
            return False, f"longest_paragraph>{c.max_paragraph_words}", metrics
        if c.drop_code_blocks and metrics["code_blocks"] and record["domain"] not in c.code_domains:
            return False, "code_block_in_cot", metrics
        if metrics["markup_ratio"] > c.max_markup_ratio:
            return False, f"markup_ratio>{c.max_markup_ratio:g}", metrics
        answer = record["answer_text"] or ""
        if "<think>" in answer or "</think>" in answer:
            return False, "think_tag_in_answer", metrics
        if len(ANSWER_TAG_RE.sub(" ", answer).split()) < c.min_answer_words:
            return False, "no_answer_after_think", metrics
        return True, None, metrics

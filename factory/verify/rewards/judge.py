"""The model-judged reward (the paper's generative reward model): a judge model grades a sample against the
prompt's reference answer, or against a rubric when there is none, through a Jinja prompt template.

Any teacher backend judges (the in-process vLLM engine, an OpenAI-compatible server, several endpoints); requests
are sent in batches (the engine is throughput-bound). Every judgement is cached in `DIR/judge_cache/` under the
hash of (judge model + sampling, the rendered judge prompt: problem, reference or rubric, sample), one atomically
written file per batch, so a rerun never asks twice. A failed request (timeout, server error) is an `error`
judgement and an unreadable reply an `unparsable` one: recorded as such, never counted as wrong; errors are not
cached (a rerun retries them).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from factory.core.config import dump_config
from factory.core.jsonl import iter_jsonl
from factory.core.shards import write_text_atomic
from factory.verify.config import JudgeConfig

REQUIRED = ("problem", "response")
ONE_OF = ("reference", "rubric")
AVAILABLE = {"problem", "response", "reference", "rubric", "domain", "reasoning"}
VERDICTS = ("correct", "wrong", "unparsable", "error")

DEFAULT_TEMPLATE = """You are grading a response to a question.

Question:
{{ problem }}

{% if reference %}Reference answer:
{{ reference }}

Decide whether the final answer of the response agrees with the reference answer.
{% else %}Grading rubric:
{{ rubric }}

Decide whether the response meets the rubric.
{% endif %}
Response:
{{ response }}

Give a one-sentence justification, then end with one line that is exactly
VERDICT: CORRECT
or
VERDICT: INCORRECT
"""


class JudgeError(ValueError):
    """The judge's template, cache or configuration is unusable."""


@dataclass(frozen=True)
class Judgement:
    verdict: str               # correct | wrong | unparsable | error
    score: float | None        # in [0, 1]; None when unparsable or failed
    text: str                  # the judge's own text, or why the request failed


# -- the template -----------------------------------------------------------------------------------------------
def load_template(cfg: JudgeConfig) -> tuple[str, jinja2.Template]:
    """(source, compiled template), checked to hold the placeholders the judge needs; errors name the file."""
    where = "the built-in judge template"
    source = DEFAULT_TEMPLATE
    if cfg.template_file is not None:
        path = Path(cfg.template_file)
        where = str(path)
        if not path.is_file():
            raise JudgeError(f"{path}: no such judge template file (verify.judge.template_file)")
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise JudgeError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        names = meta.find_undeclared_variables(env.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise JudgeError(f"{where}:{exc.lineno}: not a valid Jinja template: {exc.message}") from None
    missing = [f"{{{{ {n} }}}}" for n in REQUIRED if n not in names]
    if not names & set(ONE_OF):
        missing.append("{{ reference }} or {{ rubric }}")
    if missing:
        raise JudgeError(f"{where}: the judge template lacks the placeholder(s) {', '.join(missing)} "
                         f"(available: {', '.join(sorted(AVAILABLE))})")
    unknown = sorted(names - AVAILABLE)
    if unknown:
        raise JudgeError(f"{where}: unknown placeholder(s) {', '.join(unknown)} "
                         f"(available: {', '.join(sorted(AVAILABLE))})")
    return source, env.from_string(source)


def render(template: jinja2.Template, record: dict, cfg: JudgeConfig) -> str:
    response = (record.get("answer_text") or "").strip() or (record.get("completion") or "").strip()
    if len(response) > cfg.max_response_chars:  # keep the tail: the final answer is there
        response = "…" + response[-cfg.max_response_chars:]
    return template.render(problem=record.get("problem") or "", response=response,
                           reference=record.get("answer") or "", rubric=cfg.rubric,
                           domain=record.get("domain") or "", reasoning=record.get("reasoning") or "")


# -- the verdict ------------------------------------------------------------------------------------------------
def parse_judgement(text: str, cfg: JudgeConfig) -> Judgement:
    """The last verdict word and the last score in the judge's text (a score in (1, 10] is read out of 10)."""
    words = re.findall(cfg.verdict_pattern, text, re.IGNORECASE)
    scores = re.findall(cfg.score_pattern, text, re.IGNORECASE)
    score = None
    if scores:
        value = float(scores[-1] if isinstance(scores[-1], str) else scores[-1][0])
        score = value if value <= 1 else value / 10 if value <= 10 else None
    if words:
        word = (words[-1] if isinstance(words[-1], str) else words[-1][0]).upper()
        correct = word in ("CORRECT", "RIGHT", "YES", "PASS", "TRUE")
        return Judgement("correct" if correct else "wrong", score if score is not None else float(correct), text)
    if score is not None:
        return Judgement("correct" if score >= cfg.pass_score else "wrong", score, text)
    return Judgement("unparsable", None, text)


# -- the cache --------------------------------------------------------------------------------------------------
class JudgeCache:
    """Judgements by key, read from every batch file of `folder`; each batch is committed as one atomic file."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None
        self.entries: dict[str, dict] = {}
        if self.folder is not None and self.folder.is_dir():
            for path in sorted(self.folder.glob("batch-*.jsonl")):
                for lineno, row in iter_jsonl(path, JudgeError):
                    if not {"key", "verdict", "text"} <= set(row) or row["verdict"] not in VERDICTS:
                        raise JudgeError(f"{path}:{lineno}: not a judge cache entry")
                    self.entries[row["key"]] = row

    def get(self, key: str) -> Judgement | None:
        row = self.entries.get(key)
        return Judgement(row["verdict"], row.get("score"), row["text"]) if row else None

    def commit(self, judged: dict[str, Judgement]) -> None:
        keep = {k: j for k, j in judged.items() if j.verdict != "error"}  # failures are retried, never cached
        if self.folder is None or not keep:
            return
        lines = [json.dumps({"key": k, "verdict": j.verdict, "score": j.score, "text": j.text}, ensure_ascii=False)
                 for k, j in sorted(keep.items())]
        name = hashlib.sha256("\n".join(sorted(keep)).encode()).hexdigest()[:20]
        write_text_atomic(self.folder / f"batch-{name}.jsonl", "\n".join(lines) + "\n")
        self.entries.update({k: {"key": k, "verdict": j.verdict, "score": j.score, "text": j.text}
                             for k, j in keep.items()})


# -- the session ------------------------------------------------------------------------------------------------
class JudgeSession:
    """One judge: its template, cache and teacher (started on first use unless one is passed in)."""

    def __init__(self, cfg: JudgeConfig, cache_dir: Path | str | None = None, teacher: Any | None = None):
        self.cfg = cfg
        self.source, self.template = load_template(cfg)
        self.cache = JudgeCache(Path(cache_dir) if cache_dir is not None and cfg.cache else None)
        self._teacher, self._own = teacher, teacher is None
        self.calls = self.cached = 0
        self.identity = json.dumps({"model": cfg.teacher.model, "sampling": dump_config(cfg.sampling)},
                                   sort_keys=True)

    @property
    def model_id(self) -> str:
        return self._teacher.model_id if self._teacher is not None else self.cfg.teacher.model

    def teacher(self):
        if self._teacher is None:
            from factory.generate.teachers import make_teacher

            self._teacher = make_teacher(self.cfg.teacher, self.cfg.sampling)
        return self._teacher

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.identity}\n{prompt}".encode()).hexdigest()

    def judge(self, records: list[dict]) -> list[Judgement]:
        """One judgement per record, in order: cached ones first, the rest asked in batches of `batch_size`."""
        prompts = [render(self.template, r, self.cfg) for r in records]
        keys = [self.key(p) for p in prompts]
        found: dict[str, Judgement] = {}
        todo: dict[str, str] = {}
        for k, p in zip(keys, prompts):
            hit = self.cache.get(k)
            if hit is not None:
                found[k] = hit
            else:
                todo.setdefault(k, p)
        self.cached += sum(k in found for k in keys)
        pending = list(todo.items())
        for start in range(0, len(pending), self.cfg.batch_size):
            batch = dict(pending[start:start + self.cfg.batch_size])
            judged = self._ask(batch)
            self.cache.commit(judged)
            found.update(judged)
        return [found[k] for k in keys]

    def _ask(self, batch: dict[str, str]) -> dict[str, Judgement]:
        from factory.generate.teachers import GenRequest

        teacher = self.teacher()
        chat_api = getattr(self.cfg.teacher, "backend", "vllm") == "openai" and self.cfg.teacher.api == "chat"
        tokenizer = None if chat_api else teacher.tokenizer()
        limit = _max_model_len(teacher)
        out: dict[str, Judgement] = {}
        requests = []
        for key, prompt in batch.items():
            messages = [{"role": "user", "content": prompt}]
            if chat_api:
                requests.append(GenRequest(key=key, messages=messages))
                continue
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if limit and n_tokens >= limit:
                out[key] = Judgement("error", None, f"judge prompt too long: {n_tokens} tokens, the judge's "
                                                    f"max_model_len is {limit}")
                continue
            requests.append(GenRequest(key=key, prompt=text))
        self.calls += len(requests)
        try:
            for result in teacher.generate(requests, self.cfg.sampling):
                sample = result.samples[0]
                if sample.finish_reason == "error":
                    out[result.key] = Judgement("error", None, f"judge request failed: {sample.error}")
                else:
                    text = sample.text if sample.reasoning is None else f"{sample.reasoning}\n{sample.text}"
                    out[result.key] = parse_judgement(text, self.cfg)
        except Exception as exc:  # noqa: BLE001 - the engine failed mid-batch: what is left is recorded as failed
            for req in requests:
                out.setdefault(req.key, Judgement("error", None, f"the judge failed: {type(exc).__name__}: {exc}"))
        return out

    def close(self) -> None:
        if self._own and self._teacher is not None:
            self._teacher.close()
        self._teacher = None


def _max_model_len(teacher: Any) -> int | None:
    try:
        return int(teacher.llm.llm_engine.model_config.max_model_len)
    except AttributeError:
        return None


_SESSIONS: dict[tuple[str, str | None], JudgeSession] = {}


def session_for(cfg: JudgeConfig, cache_dir: str | None) -> JudgeSession:
    """This process's session for a judge config and cache folder (registered by `open_session`, else started)."""
    key = (cfg.model_dump_json(), cache_dir)
    if key not in _SESSIONS:
        _SESSIONS[key] = JudgeSession(cfg, cache_dir)
    return _SESSIONS[key]


def open_session(cfg: JudgeConfig, cache_dir: str | None, teacher: Any | None = None) -> JudgeSession:
    """Check the template and register this process's session (with a started teacher when one is given)."""
    close_session(cfg, cache_dir)
    _SESSIONS[(cfg.model_dump_json(), cache_dir)] = session = JudgeSession(cfg, cache_dir, teacher)
    return session


def close_session(cfg: JudgeConfig, cache_dir: str | None) -> None:
    session = _SESSIONS.pop((cfg.model_dump_json(), cache_dir), None)
    if session is not None:
        session.close()

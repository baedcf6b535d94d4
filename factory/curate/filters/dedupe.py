"""Dedupe: exact duplicates of prompts and responses (hash of normalized text) and near-duplicate prompts (MinHash
LSH, datasketch).

Dedupe needs state across the whole corpus, so it is not a per-shard filter: `Deduper` is fed the records in one
deterministic order (shard by shard, row by row) and the first occurrence wins, whatever the number of workers
that produced the shards. Its state is compact and grows only with unique prompts and kept responses: a 16-byte
hash per normalized prompt (with the prompt id that owns it), 16 bytes per kept response, and the LSH band hashes
(8 bytes per band) — never texts. Samples of one prompt id are never duplicates of each other as prompts: prompt
dedupe removes the *other* prompt ids that ask the same question.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

from datasketch import MinHash, MinHashLSH

from factory.curate.config import DedupeConfig, NearDupConfig  # noqa: F401

THOUSANDS_RE = re.compile(r"(?<=\d)[,\u2009\u202f](?=\d{3}(?!\d))")
TRAILING_ZEROS_RE = re.compile(r"(?<![\d.])(\d+)\.(\d*?)0+(?![\d.])")
TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _strip_zeros(m: re.Match) -> str:
    frac = m.group(2)
    return f"{m.group(1)}.{frac}" if frac else m.group(1)


def normalize_prompt(text: str) -> str:
    """Lowercase NFKC tokens (words and single punctuation marks) joined by one space, with numbers written one
    way: no thousands separators ("1,000" -> "1000"), no trailing decimal zeros ("2.50" -> "2.5", "3.0" -> "3").
    So "What is 1,000+2.50 ?" and "what is 1000 + 2.5?" normalize alike; "ab" and "a b" do not."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = THOUSANDS_RE.sub("", text)
    text = TRAILING_ZEROS_RE.sub(_strip_zeros, text)
    return " ".join(TOKEN_RE.findall(text))


def normalize_response(text: str) -> str:
    """Responses are long: only case and runs of whitespace are normalized (cheap on 20 kB)."""
    return " ".join(text.lower().split())


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def prompt_key(problem: str) -> str:
    return _digest(normalize_prompt(problem))


def response_key(reasoning: str, answer_text: str) -> str:
    return _digest(normalize_response(reasoning) + "\x00" + normalize_response(answer_text))


def _band_hash(band: bytes) -> bytes:
    """LSH bucket key: 8 bytes per band instead of the band's r x 8 bytes of hash values."""
    return hashlib.blake2b(band, digest_size=8).digest()


class Deduper:
    """First-occurrence-wins dedupe over records fed in a fixed order; see the module docstring."""

    def __init__(self, config: DedupeConfig | None = None):
        self.config = config or DedupeConfig()
        near = self.config.near_prompts
        self._prompt_owner: dict[bytes, str] = {}          # normalized-prompt hash -> first prompt id
        self._responses: set[bytes] = set()
        self._shard_decisions: dict[str, tuple[str, str] | None] = {}
        self._lsh = None
        if near.enabled:
            self._lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm, hashfunc=_band_hash)
            template = MinHash(num_perm=near.num_perm, seed=near.seed)
            self._perm, self._scheme = template.permutations, template.scheme
        self.unique_prompts = 0

    def start_shard(self) -> None:
        """All samples of a prompt id share one shard: per-prompt decisions are remembered only within it."""
        self._shard_decisions = {}

    def minhash(self, problem: str) -> MinHash:
        near = self.config.near_prompts
        tokens = normalize_prompt(problem).split()
        n = near.shingle_words
        shingles = {" ".join(tokens[i:i + n]).encode() for i in range(max(1, len(tokens) - n + 1))}
        m = MinHash(num_perm=near.num_perm, seed=near.seed, permutations=self._perm, scheme=self._scheme)
        m.update_batch(list(shingles))
        return m

    def _decide_prompt(self, prompt_id: str, problem: str, pkey: str) -> tuple[str, str] | None:
        key = bytes.fromhex(pkey)
        if self.config.exact_prompts:
            owner = self._prompt_owner.get(key)
            if owner is not None and owner != prompt_id:
                return "exact_prompt", owner
        near = None
        if self._lsh is not None:
            near = self.minhash(problem)
            hits = [h for h in self._lsh.query(near) if h != prompt_id]
            if hits:
                return "near_prompt", min(hits)
        if key not in self._prompt_owner:
            self._prompt_owner[key] = prompt_id
            self.unique_prompts += 1
        if near is not None and prompt_id not in self._lsh:
            self._lsh.insert(prompt_id, near)
        return None

    def check(self, prompt_id: str, problem: str, pkey: str, rkey: str) -> tuple[bool, str | None, str | None]:
        """(keep, reason, matched prompt id) for the next record in order."""
        if prompt_id in self._shard_decisions:
            decision = self._shard_decisions[prompt_id]
        else:
            decision = self._shard_decisions[prompt_id] = self._decide_prompt(prompt_id, problem, pkey)
        if decision is not None:
            return False, decision[0], decision[1]
        if self.config.exact_responses:
            r = bytes.fromhex(rkey)
            if r in self._responses:
                return False, "exact_response", None
            self._responses.add(r)
        return True, None, None

"""Conversations in, token ids and labels out: the student's chat template made `<think>`-safe.

How a conversation becomes tokens (own code, not TRL's `assistant_only_loss`, which needs `{% generation %}` markers
that the Qwen2.5/Llama-3 templates do not have, and which renders the whole conversation at once, so templates that
rewrite history, such as DeepSeek-R1-Distill's `content.split('</think>')[-1]`, silently drop the reasoning):

1. Every assistant content is replaced by an opaque sentinel and the template is rendered with the generation
   prompt, exactly as an inference engine renders the prompt. The template can therefore neither strip nor rewrite
   the reasoning: the assistant text is inserted verbatim afterwards.
2. Each piece is tokenized on its own, like the prompt at inference (which the engine tokenizes alone before the
   model continues it); so the prompt/answer token boundary is the one the model will see.
3. The template's end-of-turn (`<|im_end|>`, `<|eot_id|>`, ...) follows the answer and is trained on; a template
   whose assistant turn ends in no special token gets the tokenizer's EOS appended and trained on.
4. Labels are the assistant tokens (answer + end-of-turn) and nothing else; masking never compares token ids with
   the pad id, and the pad token is made distinct from EOS and end-of-turn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

IGNORE_INDEX = -100
THINK_OPEN = "<think>"

# A template for base models that ship none: plain "User:/Assistant:" turns, the answer closed by EOS. It uses
# no new tokens (new embedding rows would start random and, under LoRA, stay untrained).
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)

_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|fim_pad|>", "<|pad|>", "<pad>", "[PAD]", "<|vision_pad|>",
                   "<|endoftext|>", "<unk>")
_ROLES = {"system", "user", "assistant"}


class SFTDataError(ValueError):
    """The training data (or the template applied to it) is unusable; the message names the file and row."""


@dataclass
class Conversation:
    messages: list[dict]
    where: str  # "file:row" for error messages


@dataclass
class TokenizedSample:
    input_ids: np.ndarray  # int32 [n]
    labels: np.ndarray  # int32 [n], IGNORE_INDEX off the assistant turns

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# ----------------------------------------------------------------------------------------------------- reading

def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.jsonl"))
        if files:
            return files
        raise SFTDataError(f"{path}: no *.parquet or *.jsonl files")
    raise SFTDataError(f"{path}: no such file or folder")


def read_conversations(path: str | Path, column: str = "messages") -> list[Conversation]:
    """All conversations of a Parquet/JSONL file or folder, checked: a `column` of role/content turns with at
    least one non-empty assistant turn."""
    out: list[Conversation] = []
    for file in _data_files(Path(path)):
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(file).names
            if column not in names:
                raise SFTDataError(f"{file}: no '{column}' column (columns: {', '.join(names)})")
            rows = pq.read_table(file, columns=[column]).column(column).to_pylist()
            items = ((f"{file}:row {i}", value) for i, value in enumerate(rows))
        elif file.suffix in (".jsonl", ".json"):
            items = _jsonl_items(file, column)
        else:
            raise SFTDataError(f"{file}: expected .parquet or .jsonl")
        for where, value in items:
            out.append(Conversation(validate_messages(value, where), where))
    return out


def _jsonl_items(file: Path, column: str) -> Iterable[tuple[str, object]]:
    from factory.core.jsonl import iter_jsonl

    for lineno, record in iter_jsonl(file, SFTDataError):
        if column not in record:
            raise SFTDataError(f"{file}:{lineno}: no '{column}' field")
        yield f"{file}:{lineno}", record[column]


def validate_messages(value: object, where: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SFTDataError(f"{where}: messages is a string that is not JSON") from exc
    if not isinstance(value, list) or not value:
        raise SFTDataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    messages = []
    for turn, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise SFTDataError(f"{where}: turn {turn} needs a string 'content'")
        if message.get("role") not in _ROLES:
            raise SFTDataError(f"{where}: turn {turn} has role {message.get('role')!r}; expected one of "
                               f"{sorted(_ROLES)}")
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise SFTDataError(f"{where}: conversation has no assistant turn (nothing to train on)")
    return messages


# ------------------------------------------------------------------------------------------------- formatting

class ChatFormatter:
    """Renders conversations with the student's template into (text, trained) pieces and token ids/labels.

    Construction fixes the tokenizer in place: a template for base models without one, and a pad token that is
    neither EOS nor the end-of-turn token. Save that tokenizer with the model.
    """

    def __init__(self, tokenizer, chat_template: str | None = None):
        self.tokenizer = tokenizer
        if tokenizer.eos_token is None:
            raise SFTDataError(f"tokenizer of {tokenizer.name_or_path!r} has no EOS token")
        tokenizer.chat_template = chat_template or tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
        special = {t for t in tokenizer.all_special_tokens if t}
        special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
        self._special = sorted(special, key=len, reverse=True)
        self.end_of_turn_trained, self.end_of_turn_rest = self._end_of_turn()
        last = self._last_special(self.end_of_turn_trained)
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(last)
        self._fix_pad()

    # -- template probing
    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _last_special(self, text: str) -> str | None:
        best, where = None, -1
        for token in self._special:
            pos = text.rfind(token)
            if pos >= 0 and pos + len(token) > where:
                best, where = token, pos + len(token)
        return best

    def _end_of_turn(self) -> tuple[str, str]:
        """What the template writes after an assistant answer, split into the trained part (up to and including
        its last special token, e.g. `<|im_end|>`) and the rest (e.g. a newline, never generated)."""
        sentinel = _sentinel(0)
        text = self._render([{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}], False)
        if sentinel not in text:
            raise SFTDataError("the chat template does not write the assistant's content verbatim")
        after = text[text.index(sentinel) + len(sentinel):]
        last = self._last_special(after)
        if last is None:  # no end-of-turn token at all: append EOS, train on it
            return self.tokenizer.eos_token, after
        cut = after.rfind(last) + len(last)
        return after[:cut], after[cut:]

    def _fix_pad(self) -> None:
        tok = self.tokenizer
        banned = {tok.eos_token_id, self.end_of_turn_id}
        if tok.pad_token_id is not None and tok.pad_token_id not in banned:
            return
        vocab = tok.get_vocab()
        for candidate in _PAD_CANDIDATES:
            if candidate in vocab and vocab[candidate] not in banned:
                tok.pad_token = candidate
                return
        raise SFTDataError(f"tokenizer of {tok.name_or_path!r}: no pad token distinct from EOS "
                           f"{tok.eos_token!r}; set one in the tokenizer")

    # -- rendering
    def pieces(self, messages: list[dict], where: str = "") -> list[tuple[str, bool]]:
        """The conversation as consecutive (text, trained) pieces; concatenated, they are the training text."""
        sentinel_messages = [
            {"role": m["role"], "content": _sentinel(i) if m["role"] == "assistant" else m["content"]}
            for i, m in enumerate(messages)]
        pieces: list[tuple[str, bool]] = []
        so_far = ""  # rendered text in sentinel space, up to the end of the last assistant turn
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(sentinel_messages[:i], True)
            if not prompt.startswith(so_far) or "\ue000" in prompt[len(so_far):]:
                raise SFTDataError(f"{where}: the chat template renders earlier assistant turns differently in "
                                   f"the history than at generation; multi-turn training needs a template "
                                   f"that does not rewrite history (set chat_template)")
            prompt_part = prompt[len(so_far):]
            content = message["content"]
            if prompt.rstrip().endswith(THINK_OPEN) and content.lstrip().startswith(THINK_OPEN):
                # the template prefills "<think>\n" (as R1's does): the model does not generate it
                content = content.lstrip()[len(THINK_OPEN):]
                if prompt.endswith("\n") and content.startswith("\n"):
                    content = content[1:]
            pieces.append((prompt_part, False))
            pieces.append((content + self.end_of_turn_trained, True))
            if self.end_of_turn_rest:
                pieces.append((self.end_of_turn_rest, False))
            so_far = prompt + _sentinel(i) + self.end_of_turn_trained + self.end_of_turn_rest
        if not pieces:
            raise SFTDataError(f"{where}: conversation has no assistant turn (nothing to train on)")
        return [(text, trained) for text, trained in pieces if text]

    def encode_many(self, conversations: list[Conversation], max_length: int, overlong: str = "drop",
                    batch: int = 512) -> tuple[list[TokenizedSample], dict[str, int]]:
        """Tokenize conversations; samples longer than `max_length` are dropped or truncated and counted."""
        samples: list[TokenizedSample] = []
        counts = {"too_long": 0, "truncated": 0, "no_trained_tokens": 0}
        for start in range(0, len(conversations), batch):
            chunk = conversations[start:start + batch]
            all_pieces = [self.pieces(c.messages, c.where) for c in chunk]
            flat = [text for pieces in all_pieces for text, _ in pieces]
            ids = self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
            pos = 0
            for pieces in all_pieces:
                input_ids: list[int] = []
                labels: list[int] = []
                for _, trained in pieces:
                    piece_ids = ids[pos]
                    pos += 1
                    input_ids.extend(piece_ids)
                    labels.extend(piece_ids if trained else [IGNORE_INDEX] * len(piece_ids))
                if len(input_ids) > max_length:
                    if overlong == "drop":
                        counts["too_long"] += 1
                        continue
                    counts["truncated"] += 1
                    input_ids, labels = input_ids[:max_length], labels[:max_length]
                if not any(label != IGNORE_INDEX for label in labels[1:]):
                    counts["no_trained_tokens"] += 1
                    continue
                samples.append(TokenizedSample(np.asarray(input_ids, dtype=np.int32),
                                               np.asarray(labels, dtype=np.int32)))
        return samples, counts

    def encode(self, messages: list[dict], max_length: int = 1 << 30) -> TokenizedSample:
        samples, _ = self.encode_many([Conversation(validate_messages(messages, "messages"), "messages")],
                                      max_length, "truncate")
        if not samples:
            raise SFTDataError("messages: no trained tokens")
        return samples[0]

    def eos_token_ids(self) -> list[int]:
        """Token ids that must stop generation: the end-of-turn token and EOS (for generation_config)."""
        return sorted({self.end_of_turn_id, self.tokenizer.eos_token_id})


def _sentinel(index: int) -> str:
    # private-use code points: no template strips or splits them, no real text contains them
    return f"\ue000factory-assistant-{index}\ue001"

"""Tokenization for SFT: think-safe templates, labels exactly on assistant tokens, EOS trained, bad input."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.train.data import (DEFAULT_CHAT_TEMPLATE, IGNORE_INDEX, ChatFormatter, Conversation, SFTDataError,
                                read_conversations)
from factory.train.testing import LLAMA_TEMPLATE, QWEN_TEMPLATE, R1_TEMPLATE, build_tokenizer, math_conversations


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {name: build_tokenizer(root / name, template)
            for name, template in [("qwen", QWEN_TEMPLATE), ("llama", LLAMA_TEMPLATE), ("r1", R1_TEMPLATE),
                                   ("base", None)]}


def _fresh(tokenizers, name):
    import copy

    return copy.deepcopy(tokenizers[name])


def _split(tok, sample):
    trained = [int(i) for i, lab in zip(sample.input_ids, sample.labels) if lab != IGNORE_INDEX]
    prompt = [int(i) for i, lab in zip(sample.input_ids, sample.labels) if lab == IGNORE_INDEX]
    return tok.decode(trained), tok.decode(prompt)


def test_qwen_labels_are_exactly_the_assistant_turn_and_end_of_turn(tokenizers):
    tok = _fresh(tokenizers, "qwen")
    fmt = ChatFormatter(tok)
    conv = math_conversations(1)[0]
    sample = fmt.encode(conv)
    trained, prompt = _split(tok, sample)
    assert trained == conv[1]["content"] + "<|im_end|>"  # reasoning verbatim, end-of-turn trained
    assert prompt == f"<|im_start|>user\n{conv[0]['content']}<|im_end|>\n<|im_start|>assistant\n\n"
    labelled = np.flatnonzero(sample.labels != IGNORE_INDEX)
    assert (np.diff(labelled) == 1).all()  # one contiguous span
    assert (sample.labels[labelled] == sample.input_ids[labelled]).all()
    assert int(sample.input_ids[labelled[-1]]) == fmt.end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    # the prompt is tokenized exactly as an inference engine tokenizes the generation prompt
    engine_prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    n = len(tok(engine_prompt, add_special_tokens=False)["input_ids"])
    assert sample.input_ids[:n].tolist() == tok(engine_prompt, add_special_tokens=False)["input_ids"]
    assert labelled[0] == n


def test_pad_is_never_eos_or_end_of_turn(tokenizers):
    for name in ("qwen", "llama", "base"):
        tok = _fresh(tokenizers, name)
        tok.pad_token = tok.eos_token  # the classic mistake: pad == eos masks EOS out of the loss
        fmt = ChatFormatter(tok)
        assert tok.pad_token_id not in (tok.eos_token_id, fmt.end_of_turn_id)
        assert fmt.end_of_turn_id in fmt.eos_token_ids() and tok.eos_token_id in fmt.eos_token_ids()


def test_llama_header_template(tokenizers):
    tok = _fresh(tokenizers, "llama")
    fmt = ChatFormatter(tok)
    conv = math_conversations(1, seed=3)[0]
    sample = fmt.encode(conv)
    trained, _ = _split(tok, sample)
    assert sample.input_ids[0] == tok.bos_token_id
    assert trained == conv[1]["content"] + "<|eot_id|>"
    assert fmt.end_of_turn_rest == ""


def test_base_model_gets_default_template_with_trained_eos(tokenizers):
    tok = _fresh(tokenizers, "base")
    assert tok.chat_template is None
    fmt = ChatFormatter(tok)
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    conv = math_conversations(1, seed=4)[0]
    sample = fmt.encode(conv)
    trained, prompt = _split(tok, sample)
    assert trained == conv[1]["content"] + tok.eos_token
    assert prompt.startswith("User: ") and prompt.rstrip().endswith("Assistant:")
    assert int(sample.input_ids[np.flatnonzero(sample.labels != IGNORE_INDEX)[-1]]) == tok.eos_token_id


def test_r1_template_keeps_reasoning_and_does_not_duplicate_prefilled_think(tokenizers):
    tok = _fresh(tokenizers, "r1")
    fmt = ChatFormatter(tok)
    conv = math_conversations(1, seed=5)[0]
    # rendered naively, this template drops everything up to </think>:
    naive = tok.apply_chat_template(conv, tokenize=False)
    assert "We add" not in naive
    sample = fmt.encode(conv)
    trained, prompt = _split(tok, sample)
    assert prompt.endswith("<|Assistant|><think>\n")  # the template's prefill stays in the prompt
    assert trained == conv[1]["content"][len("<think>\n"):] + "<|endoftext|>"
    assert "We add" in trained and "</think>" in trained


def test_multi_turn_trains_every_assistant_turn(tokenizers):
    tok = _fresh(tokenizers, "qwen")
    fmt = ChatFormatter(tok)
    first, second = math_conversations(2, seed=6)
    conv = first + second
    sample = fmt.encode(conv)
    trained, _ = _split(tok, sample)
    assert trained == first[1]["content"] + "<|im_end|>" + second[1]["content"] + "<|im_end|>"
    with pytest.raises(SFTDataError, match="renders earlier assistant turns differently"):
        ChatFormatter(_fresh(tokenizers, "r1")).encode(conv)


def test_overlong_samples_are_dropped_or_truncated_and_counted(tokenizers):
    fmt = ChatFormatter(_fresh(tokenizers, "qwen"))
    convs = [Conversation(c, f"row {i}") for i, c in enumerate(math_conversations(20, seed=7))]
    lengths = [len(fmt.encode(c.messages)) for c in convs]
    limit = sorted(lengths)[10]
    kept, counts = fmt.encode_many(convs, limit, "drop")
    assert counts["too_long"] == sum(n > limit for n in lengths) and len(kept) == 20 - counts["too_long"]
    kept, counts = fmt.encode_many(convs, limit, "truncate")
    assert counts["truncated"] == sum(n > limit for n in lengths) and len(kept) == 20
    assert max(len(s) for s in kept) == limit
    prompt_len = min(int(np.flatnonzero(fmt.encode(c.messages).labels != IGNORE_INDEX)[0]) for c in convs)
    _, counts = fmt.encode_many(convs, prompt_len, "truncate")  # cut inside the prompt: nothing to train on
    assert counts["no_trained_tokens"] == 20


def test_reading_parquet_and_jsonl(tmp_path):
    convs = math_conversations(3)
    pq.write_table(pa.table({"messages": convs, "prompt_id": ["a", "b", "c"]}), tmp_path / "part-00000.parquet")
    got = read_conversations(tmp_path)
    assert [c.messages for c in got] == convs
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    assert [c.messages for c in read_conversations(jsonl)] == convs


def test_bad_input_names_file_and_row(tmp_path):
    pq.write_table(pa.table({"text": ["hello"]}), tmp_path / "a.parquet")
    with pytest.raises(SFTDataError, match=r"a\.parquet: no 'messages' column \(columns: text\)"):
        read_conversations(tmp_path / "a.parquet")
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"messages": math_conversations(1)[0]}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(SFTDataError, match=r"b\.jsonl:2: conversation has no assistant turn"):
        read_conversations(bad)
    bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(SFTDataError, match="b.jsonl:1: turn 0 has role 'robot'"):
        read_conversations(bad)
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(SFTDataError, match="b.jsonl:1: no 'messages' field"):
        read_conversations(bad)

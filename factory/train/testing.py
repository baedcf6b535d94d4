"""Tiny real students for tests and CPU examples: a byte-level BPE tokenizer trained here (no download) and
random-weight Qwen2/Llama models of a few hundred thousand parameters, saved as ordinary Hugging Face folders."""
from __future__ import annotations

import random
from pathlib import Path

QWEN_TEMPLATE = (  # ChatML as in Qwen2.5 (without the default system prompt)
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_TEMPLATE = (  # Llama-3 header layout
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
R1_TEMPLATE = (  # DeepSeek-R1-Distill style: strips reasoning from assistant history, prefills <think>
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}<|User|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "<|Assistant|>{{ content }}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|User|>", "<|Assistant|>"]


def math_conversations(n: int, seed: int = 0, think: bool = True) -> list[list[dict]]:
    """Curated-like single-turn conversations: an arithmetic question, reasoning in <think>, a boxed answer."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        steps = " ".join(f"Step {i}: {a} plus {b} is {a + b}." for i in range(rng.randint(1, 3)))
        answer = f"The answer is \\boxed{{{a + b}}}."
        content = f"<think>\nWe add {a} and {b}. {steps}\n</think>\n\n{answer}" if think else answer
        out.append([{"role": "user", "content": f"What is {a} + {b}? Please reason step by step, and put your "
                                                f"final answer within \\boxed{{}}."},
                    {"role": "assistant", "content": content}])
    return out


def build_tokenizer(folder: Path, template: str | None, vocab_size: int = 600):
    """Train a byte-level BPE on arithmetic text and save it as a PreTrainedTokenizerFast folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = []
    for conv in math_conversations(400, seed=1):
        corpus.extend(m["content"] for m in conv)
    corpus += ["User: Assistant: system user assistant\n\n", "Cutting Knowledge Date"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus, trainer)
    llama = template == LLAMA_TEMPLATE
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|eot_id|>" if llama else "<|endoftext|>",
        bos_token="<|begin_of_text|>" if llama else None,
        pad_token=None)
    if template is not None:
        tokenizer.chat_template = template
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def tiny_config(kind: str, vocab_size: int, layers: int = 2, hidden: int = 64):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024)
    if kind == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, **common)
    if kind == "llama":
        return LlamaConfig(tie_word_embeddings=False, **common)
    raise ValueError(kind)


def build_student(folder: Path, kind: str = "qwen2", template: str | None = "auto", seed: int = 0,
                  layers: int = 2, hidden: int = 64) -> Path:
    """A random-weight student folder (config, safetensors, tokenizer) that `from_pretrained` loads."""
    import torch
    from transformers import AutoModelForCausalLM

    if template == "auto":
        template = QWEN_TEMPLATE if kind == "qwen2" else LLAMA_TEMPLATE
    tokenizer = build_tokenizer(folder, template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tokenizer), layers, hidden))
    model.save_pretrained(str(folder))
    return folder

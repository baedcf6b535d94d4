"""Hand-built run folders for the publish tests: real Parquet shards carrying factory schema metadata."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

import factory.core.schema as fschema

HERE = Path(__file__).resolve().parent
FAKE_TOKEN = "hf_" + "FAKEfixtureTOKEN" + "0123456789abcdefXYZ"  # assembled: no token-shaped literal in the repo


def use_fixture_schemas(monkeypatch, tmp_path: Path) -> None:
    """Point factory.core.schema at the repo's schemas plus the stand-ins here (curated, curated_rejected)."""
    folder = tmp_path / "schemas"
    folder.mkdir()
    for path in fschema.schema_dir().glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    for path in (HERE / "schemas").glob("*.yaml"):  # the stand-ins win over a real curated.yaml
        shutil.copy(path, folder / path.name)
    fschema.load_schema.cache_clear()
    monkeypatch.setattr(fschema, "schema_dir", lambda: folder)


def curated_row(i: int, domain: str, source: str, sample_idx: int = 0) -> dict:
    problem = f"What is {i} + {i}?" if domain == "math" else f"Write a function returning {i}."
    reply = (f"<think>\n{i} plus {i} makes {2 * i}.\n</think>\n\nThe answer is \\boxed{{{2 * i}}}."
             if domain == "math" else f"<think>\nReturn the constant.\n</think>\n\n```python\ndef f():\n    return {i}\n```")
    return {
        "prompt_id": f"{source}-{i}", "sample_idx": sample_idx, "source": source, "domain": domain,
        "problem": problem,
        "messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": reply}],
        "num_tokens": 20 + i, "teacher": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "reward_accuracy": 1.0, "reward_format": 1.0,
    }


def write_shard(path: Path, schema_name: str, rows: list[dict], version: int | None = None,
                metadata: bool = True) -> None:
    """A real shard written as the stages write them; `version`/`metadata` forge bad inputs."""
    table = fschema.load_schema(schema_name).table(rows)
    meta = dict(table.schema.metadata or {})
    if version is not None:
        meta[fschema.META_VERSION] = str(version).encode()
    table = table.replace_schema_metadata(meta if metadata else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def make_run(run: Path, n_math: int = 30, n_code: int = 12, rejected: int = 5, secret: str | None = None) -> Path:
    """A run folder with curate shards (two domains, three sources), funnel, manifests, rejected rows."""
    rows = [curated_row(i, "math", "gsm8k_train" if i % 2 else "numina", s)
            for i in range(n_math // 2) for s in range(2)]
    rows += [curated_row(i, "code", "apps") for i in range(n_code)]
    half = len(rows) // 2
    write_shard(run / "curate" / "part-00000.parquet", "curated", rows[:half])
    write_shard(run / "curate" / "part-00001.parquet", "curated", rows[half:])
    if rejected:
        rej = [{**curated_row(100 + i, "math", "numina"), "reject_reason": "language_mixed" if i % 2 else "too_long"}
               for i in range(rejected)]
        write_shard(run / "curate" / "rejected" / "part-00000.parquet", "curated_rejected", rej)
    funnel = {
        "records_in": len(rows) + rejected, "records_out": len(rows),
        "filters": {"think_closed": {"in": len(rows) + rejected, "out": len(rows) + 3, "threshold": None},
                    "language_consistency": {"in": len(rows) + 3, "out": len(rows), "threshold": 0.95}},
        "by_source": {"numina": {"in": 20, "out": 15}, "gsm8k_train": {"in": 15, "out": 15}, "apps": {"in": 12,
                                                                                                     "out": 12}},
        "decontamination": {"math500": 2, "aime24": 0, "gsm8k": 1},
    }
    (run / "curate" / "funnel.json").write_text(json.dumps(funnel))
    manifests = {
        "generate": {"teacher": {"model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "backend": "openai",
                                 "base_url": "http://127.0.0.1:8000/v1", "api_key": secret or "sk-local"},
                     "sampling": {"n": 2, "temperature": 0.6, "top_p": 0.95, "max_tokens": 4096}},
        "verify": {"rewards": {"math": {"verifier": "math-verify"}, "code": {"timeout_s": 5},
                               "format": {"require_think": True}}},
        "curate": {"select": {"policy": "all_correct", "max_per_prompt": 2},
                   "filters": {"language_consistency": {"min": 0.95}, "max_tokens": {"max": 16384}},
                   "decontamination": {"benchmarks": ["aime24", "math500", "gsm8k"], "ngram": 13}},
    }
    for stage, config in manifests.items():
        (run / stage).mkdir(parents=True, exist_ok=True)
        (run / stage / "manifest.json").write_text(json.dumps({"stage": stage, "config": config}))
    (run / "curate" / "counts.json").write_text(json.dumps(
        {"stage": "curate", "records_in": len(rows) + rejected, "records_out": len(rows),
         "dropped": {"language_mixed": 2, "too_long": 3}, "extra": {}}))
    return run


def tiny_tokenizer():
    """A real fast tokenizer (word-level, built with `tokenizers`) with a chat template; no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<s>", "</s>", "<think>", "</think>", "user", "assistant", "what", "is", "the",
             "answer", "2", "4", "+", "=", "?", ".", "\\boxed{4}"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                          "{% if add_generation_prompt %}assistant <think> {% endif %}")
    return fast


def make_sft(run: Path, kind: str = "adapter", base_dir: Path | None = None) -> Path:
    """DIR/sft as the SFT stage leaves it: adapter/ (LoRA) or model/ (full) + tokenizer, train log, manifest."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    final = run / "sft" / ("adapter" if kind == "adapter" else "model")
    base_dir = base_dir or run / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    if kind == "adapter":
        from peft import LoraConfig, get_peft_model

        base = LlamaForCausalLM.from_pretrained(base_dir)
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                     target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        with torch.no_grad():  # non-zero B so the adapter changes the output (its loading is then observable)
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        peft_model.save_pretrained(final)
    else:
        model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (final / "training_args.bin").write_bytes(b"pickled trainer state that must not be published")
    log = [{"step": s, "epoch": s / 10, "loss": 2.0 - 0.1 * s, "learning_rate": 1e-4} for s in range(1, 11)]
    (run / "sft" / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    (run / "sft" / "manifest.json").write_text(json.dumps({"stage": "sft", "config": {
        "student": {"model": str(base_dir)}, "lora": {"r": 4, "alpha": 8} if kind == "adapter" else None,
        "learning_rate": 1e-4, "epochs": 3, "max_length": 4096, "batch_size": 64, "lr_scheduler": "cosine",
        "hub_token": "hf_should_never_show"}}))
    (run / "eval").mkdir(parents=True, exist_ok=True)
    summary = [
        {"model": "sft/model", "benchmark": "math500", "k": 4, "n_problems": 500, "pass@1": 0.412,
         "pass@1_se": 0.011, "cons@k": 0.47, "mean_tokens": 1834.2, "truncation_rate": 0.03},
        {"model": "sft/model", "benchmark": "aime24", "k": 4, "n_problems": 30, "pass@1": 0.05, "pass@1_se": 0.02,
         "cons@k": 0.067, "mean_tokens": 3900.0, "truncation_rate": 0.2},
        {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "benchmark": "math500", "k": 4, "n_problems": 500,
         "pass@1": 0.1, "pass@1_se": 0.01, "cons@k": 0.12, "mean_tokens": 900.0, "truncation_rate": 0.01},
    ]
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    return final

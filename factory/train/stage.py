"""Stage `sft`: curated conversations (DIR/curate, or any Parquet/JSONL with a `messages` column) -> DIR/sft.

DIR/sft holds: tokenized/ (cache of the tokenized samples), checkpoints/step-N/, model/ (full or merged weights
+ tokenizer), adapter/ (LoRA), train_log.jsonl, counts.json, sft_config.yaml (written with counts.json), and
manifest.json (what decides the output: factory.train.manifest), checked before anything is trained.

Multi-GPU: `accelerate launch --config_file pipelines/accelerate/fsdp2_2gpu.yaml -m factory.train.stage
--config pipelines/recipes/qwen2.5-math-7b.yaml --out DIR`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import yaml

from factory.core.shards import write_table_atomic, write_text_atomic
from factory.train.config import SFTConfig, load_sft_config
from factory.train.data import ChatFormatter, TokenizedSample, read_conversations
from factory.train.manifest import MANIFEST, check, committed, counts_from_log, sft_inputs

_CACHE_VERSION = 1


def _state():
    """The process state; on a CPU-only machine multi-process runs (torchrun) use gloo, so say cpu=True before
    anything else creates the shared state."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _input_path(cfg: SFTConfig, run_dir: Path) -> Path:
    return Path(cfg.data) if cfg.data else run_dir / "curate"


def _data_fingerprint(path: Path, cfg: SFTConfig, tokenizer) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.suffix in (".parquet", ".jsonl"))
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps([_CACHE_VERSION, cfg.student, tokenizer.chat_template, cfg.max_length, cfg.overlong,
                              cfg.messages_column, len(tokenizer)]).encode())
    return digest.hexdigest()[:16]


def _write_cache(path: Path, samples: list[TokenizedSample], counts: dict, records_in: int, fp: str) -> None:
    import pyarrow as pa

    table = pa.table({"input_ids": pa.array([s.input_ids for s in samples], type=pa.list_(pa.int32())),
                      "labels": pa.array([s.labels for s in samples], type=pa.list_(pa.int32()))})
    meta = {b"factory.sft.fingerprint": fp.encode(),
            b"factory.sft.counts": json.dumps({"records_in": records_in, "dropped": counts}).encode()}
    write_table_atomic(path, table.replace_schema_metadata(meta))


def _read_cache(path: Path, fp: str) -> tuple[list[TokenizedSample], dict, int] | None:
    import numpy as np
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if meta.get(b"factory.sft.fingerprint", b"").decode() != fp:
        return None
    info = json.loads(meta[b"factory.sft.counts"])
    ids, labels = table.column("input_ids").to_pylist(), table.column("labels").to_pylist()
    samples = [TokenizedSample(np.asarray(a, dtype=np.int32), np.asarray(b, dtype=np.int32))
               for a, b in zip(ids, labels)]
    return samples, info["dropped"], info["records_in"]


def tokenize_dataset(cfg: SFTConfig, run_dir: Path, tokenizer) -> tuple[ChatFormatter, list[TokenizedSample],
                                                                         dict, int]:
    """Tokenize the input once (cached in DIR/sft/tokenized/); the main process first, the others read it."""
    formatter = ChatFormatter(tokenizer, cfg.chat_template)
    source = _input_path(cfg, run_dir)
    if not source.exists():
        raise FileNotFoundError(f"SFT input {source} does not exist (run curate first, or set sft.data)")
    cache = run_dir / "sft" / "tokenized" / "samples.parquet"
    fp = _data_fingerprint(source, cfg, tokenizer)
    with _state().main_process_first():
        cached = _read_cache(cache, fp)
        if cached is None:
            conversations = read_conversations(source, cfg.messages_column)
            samples, counts = formatter.encode_many(conversations, cfg.max_length, cfg.overlong)
            records_in = len(conversations)
            if _state().is_main_process:
                _write_cache(cache, samples, counts, records_in, fp)
        else:
            samples, counts, records_in = cached
    return formatter, samples, counts, records_in


def run_sft(config: SFTConfig | dict | str | Path, out_dir: str | Path, *, model_config=None,
            stop_after_steps: int | None = None) -> dict:
    """Train the student of `config` on DIR/curate (or `config.data`) and write DIR/sft; return counts.json."""
    from transformers import AutoTokenizer

    from factory.train.trainer import train

    if isinstance(config, (str, Path)):
        cfg = load_sft_config(config)
    elif isinstance(config, dict):
        cfg = SFTConfig.model_validate(config)
    else:
        cfg = config
    run_dir = Path(out_dir)
    sft_dir = run_dir / "sft"
    sft_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(cfg.student, trust_remote_code=cfg.trust_remote_code)
    formatter, samples, dropped, records_in = tokenize_dataset(cfg, run_dir, tokenizer)
    result = train(cfg, samples, sft_dir, tokenizer=tokenizer, eos_token_ids=formatter.eos_token_ids(),
                   pad_id=tokenizer.pad_token_id, model_config=model_config, stop_after_steps=stop_after_steps)
    counts = {"stage": "sft", "records_in": records_in, "records_out": len(samples),
              "dropped": {k: v for k, v in dropped.items() if k != "truncated"},
              "extra": {"truncated": dropped.get("truncated", 0), "steps": result.steps, "epochs": result.epochs,
                        "tokens": result.tokens, "trained_tokens": result.trained_tokens,
                        "final_loss": result.final_loss, "tokens_per_s": round(result.tokens_per_s, 1),
                        "resumed_from_step": result.resumed_from, "mode": cfg.mode, "student": cfg.student,
                        "model_dir": str(result.model_dir) if result.model_dir else None,
                        "adapter_dir": str(result.adapter_dir) if result.adapter_dir else None}}
    if result.resumed_from >= result.steps:  # resumed into the export: no step ran here, the log has the figures
        counts["extra"].update(counts_from_log(result.log_path))
    if _state().is_main_process:  # the configuration is recorded with the work it describes, not before
        write_text_atomic(sft_dir / "sft_config.yaml", yaml.safe_dump({"sft": cfg.model_dump()}, sort_keys=False))
        write_text_atomic(sft_dir / "counts.json", json.dumps(counts, indent=1))
    return counts


def run_sft_stage(cfg, out_dir: str | Path, *, new_run: bool = False) -> dict:
    """The stage contract: the pipeline's `sft:` block on DIR/curate (`student: embedded` is the embedded SmolLM2).
    A finished run of the same configuration and input is not trained again; a stopped one resumes from its last
    checkpoint; a changed configuration or input is refused, naming what changed, unless `new_run`."""
    from factory.core.lock import clear_folder, stage_lock
    from factory.core.progress import console

    if cfg.sft is None:
        raise ValueError("the pipeline has no `sft:` block")
    sft = cfg.sft
    if sft.student == "embedded":
        from factory.core.embedded import embedded_model_dir

        sft = sft.model_copy(update={"student": str(embedded_model_dir())})
    sft_dir = Path(out_dir) / "sft"
    inputs = sft_inputs(sft, Path(out_dir))  # before the lock: a missing input leaves no folder behind
    with stage_lock(sft_dir, committed=committed):
        if new_run:
            clear_folder(sft_dir)
        state, manifest = check(sft_dir, sft, inputs)
        if state == "done":
            console.print(f"sft: already trained in {sft_dir}")
            return json.loads((sft_dir / "counts.json").read_text())
        manifest_path = sft_dir / MANIFEST
        before = manifest_path.read_bytes() if manifest_path.exists() else None
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        try:
            return run_sft(sft, out_dir)
        except BaseException:
            if not committed(sft_dir):  # nothing trained: the folder is left as it was found
                if before is None:
                    manifest_path.unlink(missing_ok=True)
                else:
                    manifest_path.write_bytes(before)
            raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (an sft: block or SFTConfig fields)")
    parser.add_argument("--out", required=True, help="run folder DIR (reads DIR/curate, writes DIR/sft)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (the value is YAML), e.g. --set mode=lora --set lora.r=16")
    args = parser.parse_args(argv)
    counts = run_sft(load_sft_config(args.config, args.set), args.out)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

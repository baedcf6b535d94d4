"""The real trainer under `accelerate launch` + FSDP2 (GPU): a sharded checkpoint resumes; export gathers.

    accelerate launch --config_file pipelines/accelerate/fsdp2_1gpu.yaml bench/fsdp_resume.py --out DIR

For full FT and LoRA on a small random Qwen2 student (real tokenizer, curated-like conversations):
A = 4 steps uninterrupted; B = killed after step 3 (last checkpoint: step 2); C = B resumed. Prints one JSON line:
the max |A - C| over the exported weights (flash-attention's backward is not bitwise deterministic on GPU, so a
small difference is expected), the losses, and what each run exported.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch
    from factory.train.stage import _state
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from factory.train.config import SFTConfig
    from factory.train.data import ChatFormatter, Conversation
    from factory.train.testing import build_student, math_conversations
    from factory.train.trainer import train

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    state = _state()
    with state.main_process_first():
        student = out / "student"
        if not (student / "config.json").exists():
            build_student(student, "qwen2", layers=4, hidden=256)
    tok = AutoTokenizer.from_pretrained(student)
    fmt = ChatFormatter(tok)
    samples, _ = fmt.encode_many([Conversation(c, "x") for c in math_conversations(64)], 256)
    report = {}
    for mode in ("full", "lora"):
        cfg = SFTConfig(student=str(student), mode=mode, epochs=1, max_steps=4, global_batch_size=16,
                        micro_batch_tokens=1024, max_length=256, save_every_steps=2, learning_rate=1e-3,
                        warmup_ratio=0.0, progress=False, lora={"r": 8, "alpha": 16, "dropout": 0.0})
        common = dict(tokenizer=tok, eos_token_ids=fmt.eos_token_ids(), pad_id=tok.pad_token_id)
        a = train(cfg, samples, out / mode / "a", **common)
        train(cfg, samples, out / mode / "b", stop_after_steps=3, **common)
        c = train(cfg, samples, out / mode / "b", **common)
        if state.is_main_process:
            wa = load_file(a.model_dir / "model.safetensors")
            wc = load_file(c.model_dir / "model.safetensors")
            logs = [[json.loads(x)["loss"] for x in (out / mode / r / "train_log.jsonl").read_text().splitlines()]
                    for r in ("a", "b")]
            report[mode] = {"resumed_from": c.resumed_from, "losses_a": logs[0], "losses_resumed": logs[1],
                            "max_abs_diff": max(float((wa[k].float() - wc[k].float()).abs().max()) for k in wa),
                            "exported": sorted(p.name for p in a.model_dir.iterdir()),
                            "adapter": sorted(p.name for p in a.adapter_dir.iterdir()) if a.adapter_dir else None,
                            "checkpoint_files": sorted(p.name for p in (out / mode / "b" / "checkpoints").glob("*/*"))}
    if state.is_main_process:
        report["world"] = state.num_processes
        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        print("FSDP_RESUME " + json.dumps(report), flush=True)
        (out / "fsdp_resume.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""What decides an SFT run's output, recorded in DIR/sft/manifest.json, and the checks a rerun goes through.

The fingerprint covers the whole output-deciding configuration (student, mode, LoRA shape, data settings, every
optimisation setting, seed, precision) and the identity of the input: DIR/curate's manifest fingerprint and part
checksums, or for `sft.data` its files' names, sizes and times. Kernels, logging and checkpoint cadence only decide
speed and are left out. A rerun whose fingerprint differs is refused while the folder holds committed work (a
checkpoint, the exported model, counts.json), naming what changed; with nothing committed there is nothing to keep.
"""
from __future__ import annotations

import json
from pathlib import Path

from factory.core.identity import (
    changed_error,
    fingerprint,
    require_finished,
    upstream_identity,
)
from factory.core.jsonl import iter_log
from factory.train.config import SFTConfig

SPEED_ONLY = {"progress", "log_every_steps", "save_every_steps", "keep_checkpoints", "resume", "trust_remote_code",
              "attention_kernel", "cudnn_min_len", "cudnn_bucket", "group_projections", "manual_gc", "liger",
              "loss_impl", "loss_chunk_tokens", "gradient_checkpointing"}
MANIFEST = "manifest.json"


def sft_fingerprint(cfg: SFTConfig) -> dict:
    """The output-deciding part of the SFT configuration."""
    return cfg.model_dump(mode="json", exclude=SPEED_ONLY)


def sft_inputs(cfg: SFTConfig, run_dir: Path) -> dict:
    """The identity of SFT's input: a finished DIR/curate, or the files of `sft.data`."""
    if cfg.data:
        path = Path(cfg.data)
        if not path.exists():
            raise FileNotFoundError(f"sft.data: {path} does not exist")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl"))
        return {"data": {"path": str(path), "files": fingerprint([(str(f.relative_to(path.parent)), f.stat().st_size,
                                                                    f.stat().st_mtime_ns) for f in files])}}
    curate = Path(run_dir) / "curate"
    require_finished(curate, reader="sft")
    return {"curate": upstream_identity(curate)}


def committed(sft_dir: Path) -> bool:
    """Whether the folder holds work a changed configuration would throw away."""
    from factory.train.checkpoint import list_checkpoints

    sft_dir = Path(sft_dir)
    return bool((sft_dir / "counts.json").exists() or (sft_dir / "model").exists() or (sft_dir / "adapter").exists()
                or list_checkpoints(sft_dir / "checkpoints"))


def _old_manifest(sft_dir: Path) -> dict | None:
    """The recorded manifest; a folder of an older factory (sft_config.yaml, no manifest) as one without inputs."""
    import yaml

    path = sft_dir / MANIFEST
    if path.exists():
        return json.loads(path.read_text())
    legacy = sft_dir / "sft_config.yaml"
    if legacy.exists():
        try:
            return {"config": sft_fingerprint(SFTConfig.model_validate(yaml.safe_load(legacy.read_text())["sft"]))}
        except Exception:  # noqa: BLE001 - unreadable: still a folder of other work
            return {"config": {}}
    return None


def check(sft_dir: Path, cfg: SFTConfig, inputs: dict) -> tuple[str, dict]:
    """('done' | 'train', manifest to record). Raises StageConfigChanged when committed work was made by another
    configuration or input."""
    config = sft_fingerprint(cfg)
    manifest = {"stage": "sft", "fingerprint": fingerprint({"config": config, "inputs": inputs}), "config": config,
                "inputs": inputs}
    old = _old_manifest(sft_dir)
    if old is not None and old.get("fingerprint") != manifest["fingerprint"] and committed(sft_dir):
        raise changed_error(sft_dir, old, config, None, inputs, prefix="sft.")
    same = old is not None and old.get("fingerprint") == manifest["fingerprint"]
    return ("done" if same and (sft_dir / "counts.json").exists() else "train"), manifest


def counts_from_log(log_path: Path) -> dict:
    """final_loss and tokens_per_s from train_log.jsonl's last line (a run resumed into its export trains no step
    in that process, so its own tally has neither)."""
    last = None
    for _, record, _ in iter_log(log_path):
        if record and "loss" in record:
            last = record
    if last is None:
        return {}
    elapsed = last.get("elapsed_s") or 0.0
    return {"final_loss": last["loss"],
            "tokens_per_s": round(last["tokens"] / elapsed, 1) if elapsed and last.get("tokens") else 0.0}

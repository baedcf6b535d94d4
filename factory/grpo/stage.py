"""`factory grpo`: prompts with answers → GRPO of a policy on verify's rewards → DIR/grpo/.

DIR/grpo holds: manifest.json (the configuration's fingerprint, written once the input checks pass; a changed
rerun is refused without --new-run),
checkpoints/checkpoint-N/ (TRL/transformers: weights, optimizer, scheduler, RNG, trainer state), rollouts/
(trace shards, one per step: `factory.grpo.rollouts`), train_log.jsonl (one line per step: reward, per-reward
means, accuracy and format rates, length, KL, clip fraction, loss), model/ (final weights + tokenizer, merged when
LoRA), adapter/ (LoRA), counts.json, prefilter.parquet (with `grpo.prefilter`: the initial policy's pass rate per
prompt, `factory.grpo.prefilter`). A rerun after kill -9 resumes from the last complete checkpoint with the same
data order and step count; the rollouts and log lines of steps after that checkpoint are dropped and redone, so
each step is written exactly once.

Several processes (data-parallel, DDP): `accelerate launch [--config_file F] -m factory.grpo.stage --config PIPE
--out DIR` (on CPUs: `python -m torch.distributed.run --nproc_per_node N --standalone -m factory.grpo.stage ...`,
gloo). `prompts_per_step` is global: each of N processes generates and trains prompts_per_step / N whole groups, so
a step is the same optimizer step whatever N (it must divide). Only the main process holds the stage lock and
writes manifest.json, train_log.jsonl, counts.json and model/; every rank writes its own rollout shard per step
(part number = step × N + rank). N is part of the configuration: a resume must use the same N.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from factory.core.config import dump_config
from factory.core.progress import console
from factory.core.shards import StageConfigChanged, fingerprint, write_json_atomic
from factory.grpo import checks
from factory.grpo.config import GRPOConfig

STAGE = "grpo"


def _policy_path(policy: str) -> str:
    if policy == "embedded":
        from factory.core.embedded import embedded_model_dir

        return str(embedded_model_dir())
    return policy


# Running choices that do not decide the output: a resume may change them.
_NOT_FINGERPRINTED = {"reward_workers", "vllm_server_base_url", "vllm_server_timeout_s"}


def _config(cfg, grpo: GRPOConfig, template, policy: str, processes: int = 1) -> dict:
    from factory.verify.stage import verify_fingerprint

    return {"grpo": grpo.model_dump(mode="json", exclude=_NOT_FINGERPRINTED), "policy": policy,
            "template": dump_config(template), "prompts": [dump_config(s) for s in (grpo.prompts or cfg.prompts)],
            "verify": verify_fingerprint(cfg.verify), "processes": processes}


def _state():
    """The process state; on a CPU-only machine a multi-process launch (torchrun) uses gloo, so say cpu=True
    before anything else creates the shared state (as SFT does)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


class MainProcessFailed(RuntimeError):
    """Raised on the other ranks when the main process failed a step only it runs (it reports the error)."""


def _on_main(state, fn):
    """Run `fn` on the main process only; the other ranks get its result, or fail with its error (none hangs)."""
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the other ranks, then raised here
            error = exc
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [result, None if error is None else f"{type(error).__name__}: {error}"]
        broadcast_object_list(box, from_process=0)
        result, message = box
        if message is not None and not state.is_main_process:
            raise MainProcessFailed(f"the main process stopped: {message}")
    if error is not None:
        raise error
    return result


def _committed(grpo_dir: Path) -> bool:
    """Whether the folder holds trained work (a checkpoint, a rollout shard, counts.json)."""
    return ((grpo_dir / "counts.json").exists() or any((grpo_dir / "rollouts").glob("part-*.parquet"))
            or any((grpo_dir / "checkpoints").glob("checkpoint-*")))


def _start(stack: contextlib.ExitStack, grpo_dir: Path, config: dict, new_run: bool) -> dict | None:
    """The main process: take the stage lock (held until the stage ends), then create or check DIR/grpo."""
    from factory.core.lock import stage_lock

    stack.enter_context(stage_lock(grpo_dir, committed=_committed))
    return _prepare_dir(grpo_dir, config, new_run)


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _prepare_dir(grpo_dir: Path, config: dict, new_run: bool) -> dict | None:
    """Create or check DIR/grpo; returns counts.json's content when this configuration already finished. A new
    folder's manifest is written by `_write_manifest` once the input checks passed."""
    from factory.core.lock import clear_folder

    if new_run:
        clear_folder(grpo_dir)  # everything but the lock this process holds
    grpo_dir.mkdir(parents=True, exist_ok=True)
    manifest, fp = grpo_dir / "manifest.json", fingerprint(config)
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("fingerprint") != fp:
            changed = _changed_keys(old.get("config", {}), config)
            raise StageConfigChanged(f"{grpo_dir} was written by a different configuration (changed: "
                                     f"{', '.join(changed) or 'fingerprint'}). Rerun with --new-run to train afresh, "
                                     f"or choose another --out folder.", changed)
        if (grpo_dir / "counts.json").exists():
            return json.loads((grpo_dir / "counts.json").read_text())
    return None


def _write_manifest(grpo_dir: Path, config: dict) -> None:
    manifest = grpo_dir / "manifest.json"
    if not manifest.exists():
        write_json_atomic(manifest, {"stage": STAGE, "fingerprint": fingerprint(config), "config": config})


def build_dataset(prompts: list[dict], template, tokenizer):
    """TRL's dataset: the prompt text exactly as the policy sees it (templated, prefill included) and every
    prompt field, which TRL hands the reward functions."""
    from datasets import Dataset

    from factory.generate.stage import build_request

    rows = []
    for p in prompts:
        _, text = build_request(p, template, tokenizer)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        rows.append({**p, "prompt": text, "prompt_text": text, "prompt_tokens": n})
    return Dataset.from_list(rows), rows[0]["prompt"]


def run_grpo(cfg, out_dir: Path | str, *, new_run: bool = False) -> dict:
    """Train the pipeline's `grpo:` policy, resuming a stopped run; returns counts.json's content."""
    if getattr(cfg, "grpo", None) is None:
        raise ValueError("the pipeline has no `grpo:` block")
    grpo: GRPOConfig = cfg.grpo
    template = grpo.template or cfg.template
    policy = _policy_path(grpo.policy)
    grpo_dir = Path(out_dir) / STAGE
    state = _state()
    config = _config(cfg, grpo, template, policy, state.num_processes)
    with contextlib.ExitStack() as stack:  # the main process's stage lock, held to the end
        done = _on_main(state, lambda: _start(stack, grpo_dir, config, new_run))
        if done is not None:
            if state.is_main_process:
                console.print(f"grpo: already trained in {grpo_dir}")
            return done
        return _run(cfg, grpo, template, policy, grpo_dir, state, config)


def _run(cfg, grpo: GRPOConfig, template, policy: str, grpo_dir: Path, state, config: dict) -> dict:
    """Check the input (every rank: the same checks, so all fail alike), train, and write counts.json (main)."""
    # -- bad input, before any model is built ---------------------------------------------------------------
    from transformers import AutoTokenizer

    from factory.generate.sources import load_prompts
    from factory.grpo.rewards import check_rewards

    prompts = load_prompts(grpo.prompts or cfg.prompts)
    checks.check_prompts(prompts, grpo, cfg.verify)
    checks.check_device(grpo)
    checks.check_processes(grpo, state.num_processes)
    _on_main(state, lambda: checks.check_server(grpo))  # TRL's server client lives on the main process
    try:
        tokenizer = AutoTokenizer.from_pretrained(policy)
    except Exception as exc:  # noqa: BLE001
        raise checks.GRPOInputError(f"grpo.policy: cannot load the tokenizer of {policy!r}: {exc}") from None
    _, first = build_dataset(prompts[:1], template, tokenizer)
    checks.check_template(template, first, tokenizer, "grpo.template" if grpo.template else "template")
    reference = checks.check_reference(grpo, policy)
    check_rewards(grpo)
    dropped: dict[str, int] = {}
    if grpo.prefilter is not None:  # pass rates of the initial policy, sampled on the main process only
        from factory.grpo.prefilter import apply_prefilter

        prompts = _on_main(state, lambda: apply_prefilter(cfg, grpo, prompts, template, policy, grpo_dir))
        dropped = prompts.dropped
    dataset, _ = build_dataset(prompts, template, tokenizer)
    if state.is_main_process:
        _write_manifest(grpo_dir, config)
    from factory.grpo.train import train

    result = train(cfg, grpo, policy, reference, template, tokenizer, dataset, grpo_dir)
    counts = {"stage": STAGE, "records_in": len(prompts) + sum(dropped.values()),
              "records_out": result.pop("rollout_rows"), "dropped": dropped, "extra": result}
    if state.is_main_process:
        write_json_atomic(grpo_dir / "counts.json", counts)
    return counts


def main(argv: list[str] | None = None) -> None:
    """`accelerate launch -m factory.grpo.stage --config PIPE --out DIR`: the stage on every launched process."""
    from factory.config import ConfigError, load_pipeline
    from factory.core.lock import StageLocked

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", required=True, help="pipeline YAML with a grpo: block")
    parser.add_argument("--out", "-o", help="run folder DIR (writes DIR/grpo; default outputs/<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline key (the value is YAML), e.g. --set grpo.steps=10")
    parser.add_argument("--new-run", action="store_true", help="discard DIR/grpo and train afresh")
    args = parser.parse_args(argv)
    try:
        cfg = load_pipeline(args.config, args.set)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(args.out) if args.out else Path("outputs") / cfg.name
    from factory.generate.sources import SourceError

    try:
        counts = run_grpo(cfg, out, new_run=args.new_run)
    except (MainProcessFailed, checks.GRPOInputError, StageConfigChanged, StageLocked, SourceError) as exc:
        # Raised before any step, on every rank alike: report once, and let no rank exit (and the launcher stop
        # the others) before the main process has left the folder as it found it.
        if _state().is_main_process:
            print(f"error: {exc}", file=sys.stderr)
        _state().wait_for_everyone()
        raise SystemExit(1) from None
    except (FileNotFoundError, ValueError) as exc:
        print(f"error (rank {_state().process_index}): {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if _state().is_main_process:
        print(json.dumps(counts))


if __name__ == "__main__":
    main()

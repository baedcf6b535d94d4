"""Bad input, caught before any training step, each error naming the key to fix."""
from __future__ import annotations

from pathlib import Path

from factory.generate.config import TemplateConfig
from factory.grpo.config import GRPOConfig
from factory.verify.config import VerifyConfig

THINK = "<think>"


class GRPOInputError(ValueError):
    """The GRPO stage's configuration or prompts cannot train."""


def check_prompts(prompts: list[dict], grpo: GRPOConfig, verify: VerifyConfig) -> None:
    """An accuracy reward needs a reference: an answer (math, choice, exact) or tests (code) on every prompt."""
    if not prompts:
        raise GRPOInputError("grpo.prompts: the prompt set is empty")
    if len(prompts) < grpo.prompts_per_step:
        raise GRPOInputError(f"grpo.prompts_per_step={grpo.prompts_per_step} is more than the {len(prompts)} "
                             f"prompts")
    if "accuracy" not in grpo.rewards:
        return
    from factory.verify.verdicts import reward_kind

    missing = []
    for p in prompts:
        kind = reward_kind(p, verify)
        need = "tests" if kind == "code" else "answer"
        if kind == "none":
            missing.append(f"{p['prompt_id']} (domain {p['domain']!r} has no accuracy reward in verify.rewards)")
        elif not (p.get(need) or "").strip():
            missing.append(f"{p['prompt_id']} (no {need})")
    if missing:
        raise GRPOInputError(f"grpo.rewards.accuracy: {len(missing)} of {len(prompts)} prompts cannot be scored: "
                             f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; give every prompt a "
                             f"reference (prompts[].columns.answer) or drop the accuracy reward")


def check_template(template: TemplateConfig, sample_text: str, tokenizer, key: str) -> None:
    """The policy must be able to open <think>: the prompt (prefill included) says <think>, and the tokenizer
    writes it back unchanged."""
    if template.kind == "chat" and THINK not in (template.prefill or ""):
        raise GRPOInputError(f"{key}.prefill: a chat template must prefill '<think>\\n' (got "
                             f"{template.prefill!r}); the policy's reply must open <think>")
    if THINK not in sample_text:
        raise GRPOInputError(f"{key}: the rendered prompt never mentions {THINK} (kind {template.kind}); use kind "
                             f"r1_zero (base models) or chat with prefill '<think>\\n' (instruct models)")
    ids = tokenizer("<think>\nx\n</think>", add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != "<think>\nx\n</think>":
        raise GRPOInputError(f"{key}: the policy's tokenizer cannot write <think>…</think> back unchanged "
                             f"({tokenizer.decode(ids)!r})")


def check_reference(grpo: GRPOConfig, policy: str) -> str | None:
    """The reference model's folder or id must load (config and weights present); returns its path."""
    if grpo.effective_beta == 0:
        return None
    ref = grpo.reference_model or policy
    key = "grpo.reference_model" if grpo.reference_model else "grpo.policy (the reference is the initial policy)"
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(ref)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the same user error
        raise GRPOInputError(f"{key}: the reference model {ref!r} cannot be loaded: {exc}") from None
    if Path(ref).is_dir() and not any(Path(ref).glob("*.safetensors")) and not any(Path(ref).glob("*.bin")):
        raise GRPOInputError(f"{key}: {ref} has a config but no weights (*.safetensors / *.bin)")
    return ref


def resolve_use_vllm(grpo: GRPOConfig) -> bool:
    """`use_vllm: auto` is on where TRL's colocated vLLM can run: a GPU and an importable vLLM."""
    import importlib.util

    import torch

    if grpo.vllm_mode == "server":  # rollouts come from the server, whatever this machine has
        return True
    if grpo.use_vllm != "auto":
        return bool(grpo.use_vllm)
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def check_device(grpo: GRPOConfig) -> None:
    import importlib.util

    import torch

    if grpo.use_vllm is True and not torch.cuda.is_available():
        raise GRPOInputError("grpo.use_vllm: vLLM rollouts are colocated on the training GPU; on the CPU set "
                             "use_vllm: false or auto (rollouts by model.generate)")
    if grpo.use_vllm is True and importlib.util.find_spec("vllm") is None:
        raise GRPOInputError("grpo.use_vllm: vLLM is not installed (pip install 'factory[gpu]'), or set "
                             "use_vllm: auto")


def check_processes(grpo: GRPOConfig, processes: int) -> None:
    """`prompts_per_step` is per optimizer step over all processes: each takes prompts_per_step / processes whole
    groups (TRL's per-device batch), so it must divide, and so must the micro-batches."""
    if grpo.prompts_per_step % processes:
        raise GRPOInputError(f"grpo.prompts_per_step={grpo.prompts_per_step} does not divide by the {processes} "
                             f"training processes (each takes whole groups of G); use a multiple of {processes}")
    per_process = grpo.prompts_per_step // processes * grpo.num_generations
    if grpo.micro_batch_size is not None and per_process % grpo.micro_batch_size:
        raise GRPOInputError(f"grpo.micro_batch_size={grpo.micro_batch_size} must divide each process's "
                             f"{per_process} samples (prompts_per_step / {processes} processes × G)")


def check_server(grpo: GRPOConfig) -> None:
    """Server mode: the vLLM server answers its /health within `vllm_server_timeout_s`, and this process has a GPU
    (TRL syncs the weights to the server over NCCL after each step)."""
    if grpo.vllm_mode != "server":
        return
    import time
    import urllib.error
    import urllib.request

    url = grpo.vllm_server_base_url.rstrip("/")
    deadline, error = time.monotonic() + grpo.vllm_server_timeout_s, None
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=min(10.0, grpo.vllm_server_timeout_s)) as resp:
                if resp.status == 200:
                    break
                error = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = str(getattr(exc, "reason", exc))
        if time.monotonic() >= deadline:
            raise GRPOInputError(f"grpo.vllm_server_base_url: no vLLM server answers at {url}/health after "
                                 f"{grpo.vllm_server_timeout_s:g} s ({error}); start one with `trl vllm-serve "
                                 f"--model POLICY` (pipelines/cluster/grpo-2gpu.sbatch), fix the URL, or set "
                                 f"grpo.vllm_mode: colocate")
        time.sleep(1.0)
    import torch

    if not torch.cuda.is_available():
        raise GRPOInputError("grpo.vllm_mode: server mode sends the updated weights to the vLLM server over NCCL, "
                             "which needs a GPU in the trainer; on the CPU use vllm_mode: colocate")

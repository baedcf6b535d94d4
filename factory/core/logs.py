"""Third-party log levels: quiet by default (a vLLM engine start prints a handful of lines, not hundreds), verbose
with `factory --verbose` or FACTORY_VERBOSE=1. Only environment variables are set, before vLLM, transformers or
torch are imported, so the engine's own processes inherit them; a variable the user set is left alone."""
from __future__ import annotations

import os

# name → (quiet value, verbose value); None: leave unset
_LEVELS: dict[str, tuple[str | None, str | None]] = {
    "VLLM_LOGGING_LEVEL": ("ERROR", "INFO"),
    "TRANSFORMERS_VERBOSITY": ("error", "info"),
    "TORCH_CPP_LOG_LEVEL": ("ERROR", None),           # c10 warnings such as the NUMA binding notice
    "HF_HUB_DISABLE_PROGRESS_BARS": ("1", None),
    "TOKENIZERS_PARALLELISM": ("false", None),        # the fork warning of tokenizers
    "RAY_DEDUP_LOGS": ("1", None),
    # vLLM's own import-time FutureWarnings (torch.distributed.reduce_op), once per engine process
    "PYTHONWARNINGS": ("ignore::FutureWarning:vllm.triton_utils.dispatcher,"
                       "ignore::UserWarning:multiprocessing.resource_tracker", None),
}


def verbose_requested(flag: bool = False) -> bool:
    return flag or os.environ.get("FACTORY_VERBOSE", "").lower() not in ("", "0", "false", "no")


def configure_third_party_logs(verbose: bool = False) -> None:
    """Set the log-level variables of vLLM, transformers, torch and friends unless the user set them."""
    verbose = verbose_requested(verbose)
    if verbose:
        os.environ["FACTORY_VERBOSE"] = "1"
    for name, (quiet, loud) in _LEVELS.items():
        value = loud if verbose else quiet
        if value is not None:
            os.environ.setdefault(name, value)

"""Hub upload: repo id and token checks (before any work), the upload plan, and the thin network call.

The token comes from huggingface_hub's own lookup (HF_TOKEN, then the login cache of `hf auth login`); it is passed
to the API and nowhere else, so it never reaches a file, a log line or a card.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from factory.publish.cards import validate_dataset_card, validate_model_card
from factory.publish.common import PublishError, folder_files

RepoType = Literal["dataset", "model"]


def check_repo_id(repo_id: str, what: str = "--repo-id") -> str:
    """`ORG/NAME` as the Hub spells repo ids; a PublishError says what is wrong otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"{what}: {repo_id!r} is not of the form ORG/NAME (e.g. my-org/r1-distill-math)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PublishError(f"{what}: {exc}") from exc
    return repo_id


def resolve_token() -> str | None:
    """The Hub token from HF_TOKEN or the login cache (huggingface_hub's lookup), or None."""
    from huggingface_hub import get_token

    return get_token()


def require_token() -> str:
    token = resolve_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access), "
                           "or pass --dry-run to build the folders without uploading")
    return token


def require_online() -> None:
    """An upload cannot work with huggingface_hub's offline mode on: say so before any work."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE is set: the Hub cannot be reached; unset it, or pass --dry-run")


@dataclass
class UploadPlan:
    repo_id: str
    repo_type: RepoType
    folder: Path
    private: bool
    files: list[tuple[str, int]]
    large: bool  # resumable multi-commit upload rather than one commit

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        how = "resumable large-folder upload" if self.large else "single commit"
        lines = [f"{self.repo_type} {self.repo_id} ({'private' if self.private else 'public'}, {how}): "
                 f"{len(self.files)} files, {_human(self.total_bytes)} from {self.folder}"]
        lines += [f"  {path}  {_human(size)}" for path, size in self.files]
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def plan_upload(folder: Path, repo_id: str, repo_type: RepoType, private: bool,
                large_threshold_bytes: float, large_threshold_files: int = 100) -> UploadPlan:
    files = folder_files(folder)
    if not files:
        raise PublishError(f"{folder}: nothing to upload")
    large = sum(s for _, s in files) > large_threshold_bytes or len(files) > large_threshold_files
    return UploadPlan(repo_id=repo_id, repo_type=repo_type, folder=folder, private=private, files=files, large=large)


def upload(plan: UploadPlan, token: str) -> str:
    """Create the repo if needed and upload the folder; returns the repo URL. This is the only network step."""
    from huggingface_hub import HfApi

    card_text = (plan.folder / "README.md").read_text(encoding="utf-8")
    # Cards were checked offline when built; check them once more against the Hub's own validator.
    card = (validate_dataset_card if plan.repo_type == "dataset" else validate_model_card)(card_text)
    card.validate(repo_type=plan.repo_type)
    api = HfApi(token=token)
    if plan.large and hasattr(api, "upload_large_folder"):
        # huggingface_hub < 1.0: the dedicated resumable uploader (state kept in FOLDER/.cache/huggingface).
        api.upload_large_folder(repo_id=plan.repo_id, folder_path=plan.folder, repo_type=plan.repo_type,
                                private=plan.private)
    else:
        # Newer huggingface_hub: upload_folder streams through Xet, splits big folders into several commits and
        # resumes an interrupted upload when rerun; a small folder is one commit.
        api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True)
        api.upload_folder(repo_id=plan.repo_id, folder_path=plan.folder, repo_type=plan.repo_type,
                          commit_message=f"factory publish: {len(plan.files)} files",
                          ignore_patterns=[".*", ".*/**"])
    prefix = "datasets/" if plan.repo_type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{plan.repo_id}"

"""`factory publish`: build the dataset and model repo folders of a run, then upload them to the Hub.

Order matters for bad input: the repo id and the token are checked before anything is read or written, so a
missing token fails in a second, not after resharding a large dataset (a dry run needs no token). The build and the
upload hold DIR/publish's writer lock: a second publish of the same run is refused (`StageLocked`, naming the
holder) before it touches DIR/publish.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from factory.core.lock import stage_lock
from factory.publish.common import PublishError, assert_secret_absent, write_json_atomic
from factory.publish.config import PublishConfig  # noqa: F401
from factory.publish.dataset import DatasetBuild, build_dataset_folder
from factory.publish.model import ModelBuild, build_model_folder, sft_artifact
from factory.publish.upload import (
    UploadPlan,
    check_repo_id,
    plan_upload,
    require_online,
    require_token,
    resolve_token,
    upload,
)

STAGE = "publish"
PLACEHOLDER_REPO_ID = "ORG/NAME"  # a dry run without --repo-id plans for this


@dataclass
class PublishResult:
    dataset: DatasetBuild | None
    model: ModelBuild | None
    plans: list[UploadPlan]
    urls: list[str] = field(default_factory=list)
    dry_run: bool = False


def run_publish(config: PublishConfig, out_dir: Path | str, repo_id: str | None = None, private: bool | None = None,
                dry_run: bool = False, console: Console | None = None) -> PublishResult:
    """Publish run folder `out_dir` as dataset repo `repo_id` (and model repo `model.repo_id or repo_id`).

    `repo_id` and `private` override the config's keys of the same name (the CLI flags).
    """
    console = console or Console(highlight=False, soft_wrap=True)
    run_dir = Path(out_dir)
    repo_id = repo_id or config.repo_id
    if not repo_id and dry_run:  # a plan needs no real target: show it for a placeholder
        repo_id = PLACEHOLDER_REPO_ID
        console.print(f"Dry run without --repo-id: planning for the placeholder {PLACEHOLDER_REPO_ID}")
    if not repo_id:
        raise PublishError("--repo-id: no repo id given (flag or publish.repo_id in the pipeline YAML)")
    private = config.private if private is None else private
    check_repo_id(repo_id)
    model_repo_id = check_repo_id(config.model.repo_id, "publish.model.repo_id") if config.model.repo_id else repo_id
    token = None
    if not dry_run:
        token = require_token()
        require_online()
    if not run_dir.is_dir():
        raise PublishError(f"{run_dir}: no such run folder")
    want_model = (config.model.enabled if config.model.enabled is not None
                  else sft_artifact(run_dir, config.model.artifact) is not None)
    if not config.dataset.enabled and not want_model:
        raise PublishError("publish: both publish.dataset.enabled and publish.model.enabled are off; nothing to do")

    stage_dir = run_dir / STAGE
    with stage_lock(stage_dir):  # one publish of a run at a time; a failed first start leaves no DIR/publish
        return _build_and_upload(config, run_dir, stage_dir, repo_id, model_repo_id, want_model, private, token,
                                 dry_run, console)


def _build_and_upload(config: PublishConfig, run_dir: Path, stage_dir: Path, repo_id: str, model_repo_id: str,
                      want_model: bool, private: bool, token: str | None, dry_run: bool,
                      console: Console) -> PublishResult:
    """Build the repo folders under DIR/publish, plan their uploads, and (unless `dry_run`) upload them."""
    dataset = model = None
    if config.dataset.enabled:
        dataset = build_dataset_folder(run_dir, stage_dir / "dataset", config.dataset, repo_id,
                                       model_repo_id if want_model else None)
        console.print(f"dataset: {dataset.records_in:,} samples from {run_dir / dataset.source}")
    if want_model:
        model = build_model_folder(run_dir, stage_dir / "model", config.model, model_repo_id,
                                   repo_id if dataset else None)
    # Whatever token is configured (even on a dry run) must not have slipped into a built file.
    secret = token or resolve_token()
    plans = []
    for build, rid, rtype in ((dataset, repo_id, "dataset"), (model, model_repo_id, "model")):
        if build is None:
            continue
        assert_secret_absent(build.folder, secret)
        plans.append(plan_upload(build.folder, rid, rtype, private, config.large_upload_mb * 1e6))

    result = PublishResult(dataset=dataset, model=model, plans=plans, dry_run=dry_run)
    _write_record(stage_dir, config, result, repo_id, model_repo_id, private)
    console.print(("Dry run: would upload" if dry_run else "Uploading") + f" {len(plans)} repo(s):")
    for plan in plans:
        console.print(plan.describe())
    if dry_run:
        console.print("Dry run: nothing was uploaded.")
        return result
    for plan in plans:
        result.urls.append(upload(plan, token))
        console.print(f"uploaded {plan.repo_type} {result.urls[-1]}")
    _write_record(stage_dir, config, result, repo_id, model_repo_id, private)
    return result


def _write_record(stage_dir: Path, config: PublishConfig, result: PublishResult, repo_id: str,
                  model_repo_id: str, private: bool) -> None:
    """manifest.json (config and targets) and counts.json (what was published) of the publish stage."""
    write_json_atomic(stage_dir / "manifest.json", {
        "stage": STAGE, "config": config.model_dump(mode="json"), "repo_id": repo_id,
        "model_repo_id": model_repo_id if result.model else None, "private": private, "dry_run": result.dry_run,
        "uploaded": result.urls,
    })
    ds = result.dataset
    write_json_atomic(stage_dir / "counts.json", {
        "stage": STAGE,
        "records_in": ds.records_in if ds else 0,
        "records_out": ds.configs.get("all", ds.records_in) if ds else 0,
        "dropped": {},
        "extra": {
            "source": ds.source if ds else None,
            "configs": ds.configs if ds else {},
            "rejected_rows": ds.rejected_rows if ds else 0,
            "model_kind": result.model.kind if result.model else None,
            "files": {p.repo_type: len(p.files) for p in result.plans},
            "bytes": {p.repo_type: p.total_bytes for p in result.plans},
        },
    })


def publish_stage(cfg, run_dir: Path, *, new_run: bool = False) -> dict:
    """The stage contract: publish with the pipeline's `publish:` block (repo id and visibility from the YAML)."""
    return {"urls": run_publish(cfg.publish, run_dir).urls}

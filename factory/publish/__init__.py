"""Publishing to the Hugging Face Hub: dataset and model repo folders with their cards, and the upload."""
from factory.publish.common import PublishError
from factory.publish.dataset import DatasetBuild, DatasetPublishConfig, build_dataset_folder
from factory.publish.model import ModelBuild, ModelPublishConfig, build_model_folder
from factory.publish.upload import UploadPlan, check_repo_id, plan_upload, require_token, resolve_token, upload

__all__ = [
    "DatasetBuild", "DatasetPublishConfig", "ModelBuild", "ModelPublishConfig", "PublishError", "UploadPlan",
    "build_dataset_folder", "build_model_folder", "check_repo_id", "plan_upload", "require_token", "resolve_token",
    "upload",
]

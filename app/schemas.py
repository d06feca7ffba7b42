"""Response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.names import LABEL_REGEX, LABEL_RULE


class ErrorBody(BaseModel):
    detail: str
    code: str


class Label(BaseModel):
    label: str
    index: int
    score: float


class Explanation(BaseModel):
    method: str  # "gradcam"
    label: str  # the class explained
    layer: str  # the feature map it was taken at
    png: str  # base64 RGBA PNG, the size of the image the model saw


class ImagePrediction(BaseModel):
    filename: str | None
    # True when the version abstains: its calibrated top score is under its threshold (or
    # the client's), or the top class is its "none of these" class. `top` is still listed.
    unknown: bool = False
    top: list[Label]
    explanation: Explanation | None = None


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[ImagePrediction]


class VersionInfo(BaseModel):
    version: int
    created_at: str | None = None
    source: str | None = None
    base: str | None = None
    architecture: str | None = None
    image_size: int | None = None
    class_names: list[str] = []
    trained: bool = True
    metrics: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    # Accuracy and speed at each inference precision, and the one chosen (app.serving.precision).
    precision_study: dict[str, Any] | None = None
    heldout: dict[str, int] | None = None  # images kept to measure it
    # Temperature scaling fitted on the validation images: the temperature, the expected
    # calibration error before and after, the reliability diagrams (app.serving.calibration).
    calibration: dict[str, Any] | None = None
    # When the version answers unknown: the score, its threshold, the share kept.
    abstention: dict[str, Any] | None = None


class ModelInfo(BaseModel):
    name: str
    status: str
    reason: str | None = None
    last_error: str | None = None
    active_version: int | None = None
    versions: list[int] = []
    architecture: str | None = None
    input_size: int | None = None
    class_names: list[str] = []
    trained: bool | None = None
    backend: str | None = None
    precision: str | None = None  # inference arithmetic of the active version
    precision_reason: str | None = None  # why: the setting, or the version's study
    metrics: dict[str, Any] | None = None


class ModelDetail(ModelInfo):
    version_details: list[VersionInfo] = []


class ValidationImage(BaseModel):
    url: str
    true: str
    predicted: str
    score: float
    source: str | None = None


class ValidationImages(BaseModel):
    model: str
    version: int
    true: str | None = None
    predicted: str | None = None
    in_cell: int | None = None  # validation images in the cell, kept or not
    per_cell: int  # at most this many are kept per cell
    images: list[ValidationImage]


class ModelList(BaseModel):
    models: list[ModelInfo]


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str]


class JobProgress(BaseModel):
    phase: str
    epoch: int
    total_epochs: int
    fraction: float
    eta_seconds: float | None = None


class JobError(BaseModel):
    code: str | None
    detail: str


class Job(BaseModel):
    job_id: str
    model: str
    status: str
    promote: bool
    params: dict[str, Any]
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str
    attempts: int
    progress: JobProgress | None = None
    history: list[dict[str, Any]] = []
    dataset: dict[str, Any] | None = None
    skipped: list[dict[str, Any]] = []
    result: dict[str, Any] | None = None
    error: JobError | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        error = None
        if row.get("error"):
            error = JobError(code=row.get("error_code"), detail=row["error"])
        fields = {k: v for k, v in row.items() if k in cls.model_fields and v is not None}
        fields.pop("error", None)
        return cls(job_id=row["id"], error=error, **fields)


class JobCreated(BaseModel):
    job_id: str
    status: str


class JobList(BaseModel):
    jobs: list[Job]


class SkippedFileInfo(BaseModel):
    path: str
    reason: str


class DatasetReport(BaseModel):
    class_names: list[str]
    counts: dict[str, int]
    images: int
    skipped: list[SkippedFileInfo] = []
    duplicates: list[list[str]] = []
    warnings: list[str] = []


class ArchitectureInfo(BaseModel):
    name: str
    title: str
    paper: str
    year: int
    input_size: int
    parameters: int
    paper_parameters: str
    default_image_size: int
    min_image_size: int
    pretrained: bool  # Keras has ImageNet weights: transfer learning and fine-tuning
    weights_cached: bool  # those weights are on this machine (no download on first use)
    from_scratch_only: bool
    # Pretrained bases: their layers, and where auto fine-tuning starts (the last stage
    # from 15 images per class, the upper half from 400).
    base_layers: int | None = None
    fine_tune_at: dict[str, int] | None = None


class ArchitectureList(BaseModel):
    architectures: list[ArchitectureInfo]


class DatasetVersionInfo(BaseModel):
    version: int
    created_at: str
    parent: int | None = None
    change: dict[str, Any] = {}  # what the change was: action, class, counts
    classes: dict[str, int]  # images per class
    images: int


class DatasetInfo(BaseModel):
    name: str
    latest_version: int
    classes: dict[str, int]  # images per class, latest version
    images: int
    bytes: int
    created_at: str
    updated_at: str
    warnings: list[str] = []
    versions: list[DatasetVersionInfo] = []


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


class DuplicateImage(BaseModel):
    filename: str
    id: str
    label: str  # the class the stored copy is in


class DatasetChange(BaseModel):
    """The answer to every change of a dataset: the version it made."""

    name: str
    version: int
    changed: bool = True  # false: nothing new (every image was there already)
    added: int = 0
    added_ids: list[str] = []
    duplicates: list[DuplicateImage] = []
    skipped: list[SkippedFileInfo] = []


class DatasetImage(BaseModel):
    id: str
    label: str
    filename: str
    bytes: int
    source: str
    added_at: str
    url: str
    thumbnail_url: str


class DatasetImages(BaseModel):
    name: str
    version: int
    label: str | None = None
    total: int
    offset: int
    limit: int
    items: list[DatasetImage]


class DatasetImageRef(BaseModel):
    id: str
    label: str


class DatasetRelabel(BaseModel):
    id: str
    to: str
    # "from" is a keyword: the old class is `old`.
    old: str


class DatasetDiff(BaseModel):
    name: str
    old: int
    new: int
    added: list[DatasetImageRef]
    removed: list[DatasetImageRef]
    relabelled: list[DatasetRelabel]
    classes_added: list[str]
    classes_removed: list[str]


class DatasetVersionDetail(DatasetVersionInfo):
    name: str
    diff: DatasetDiff | None = None  # from the parent version


class Relabel(BaseModel):
    label: str = Field(pattern=LABEL_REGEX, description=LABEL_RULE)
    create_class: bool = False  # make the class when the dataset has none by that name


class NewClass(BaseModel):
    label: str = Field(pattern=LABEL_REGEX, description=LABEL_RULE)

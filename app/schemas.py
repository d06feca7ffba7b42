"""Response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, TypeAdapter, field_validator

from app.names import LABEL_REGEX, LABEL_RULE, NAME_REGEX


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
    # True when the version abstains: the image is too far from every training image (or
    # its calibrated top score under the threshold: the version's or the client's), or the
    # top class is its "none of these" class. `top` is still listed.
    unknown: bool = False
    # The cosine similarity of the image's features to the nearest training image's, for a
    # version that answers unknown by it (under its threshold: unknown); else null.
    similarity: float | None = None
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
    # What training chose and why: its phases, fine-tuning depth, class weights, refit.
    training: dict[str, Any] | None = None
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
    # The running rollout with its live figures, as GET /models/{name}/rollout shows it.
    rollout: dict[str, Any] | None = None


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
    rollout: dict[str, Any] | None = None  # {"mode", "share"}: rolled out, not promoted
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
    # A reviewed prediction's: the model, its version, its guess and score, when captured.
    origin: dict[str, Any] | None = None


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


# -- capture and review --------------------------------------------------------------------


class CaptureSettings(BaseModel):
    """What a model keeps of its predictions (``PUT /models/{name}/capture``): an image is
    kept when its top score is under ``below_score``, or when a random draw falls under
    ``sample_rate``, within the caps."""

    model_config = ConfigDict(extra="forbid")

    below_score: float | None = Field(
        0.5, ge=0, le=1, description="keep images whose top score is under this (null: none)"
    )
    sample_rate: float = Field(0.0, ge=0, le=1, description="keep this share of all images")
    max_per_hour: int = Field(100, ge=1, le=1_000_000, description="at most this many an hour")
    max_images: int = Field(1000, ge=1, le=10_000_000, description="at most this many kept")
    expire_after_days: float | None = Field(
        None, gt=0, le=3650, description="delete a kept image after this many days (null: never)"
    )
    dataset: str | None = Field(
        None,
        pattern=NAME_REGEX,
        description="the dataset accepted images go to; default: the one the model's"
        " version trained on",
    )


class CaptureStatus(BaseModel):
    model: str
    enabled: bool
    settings: CaptureSettings | None = None
    images: int = 0  # kept now
    last_hour: int = 0
    bytes: int = 0


class ReviewLabel(BaseModel):
    label: str
    score: float


class ReviewItem(BaseModel):
    """A kept prediction waiting for review."""

    id: str
    model: str
    version: int
    top: list[ReviewLabel]
    label: str  # the model's guess
    score: float
    unknown: bool
    reason: str  # below_score | sampled
    filename: str | None = None
    bytes: int
    created_at: str
    image_url: str


class ReviewList(BaseModel):
    items: list[ReviewItem]
    total: int
    offset: int
    limit: int
    order: str
    classes: list[str] = []  # the model's classes (its active version), when one is named
    dataset: str | None = None  # where accepted images go, when one is named and known


class ReviewAction(BaseModel):
    """``accept`` adds the image to the dataset under ``label`` (default: the model's
    guess; a new name makes a new class); ``discard`` deletes it."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "discard"]
    label: str | None = Field(None, pattern=LABEL_REGEX, description=LABEL_RULE)
    dataset: str | None = Field(
        None, pattern=NAME_REGEX, description="the dataset to add to (default: see capture)"
    )


class ReviewResult(BaseModel):
    id: str
    action: str
    label: str | None = None
    dataset: str | None = None
    version: int | None = None  # the dataset's new version
    image_id: str | None = None
    new_class: bool = False


class Deleted(BaseModel):
    deleted: int


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_version: int | None = Field(
        None, ge=1, description="the dataset's version; default the latest"
    )
    promote: bool = True


class Comparison(BaseModel):
    """Two versions of a model on the same images."""

    model: str
    images: int
    basis: str  # which images, and why they are fair to both
    versions: dict[str, Any]  # version -> {"accuracy", "correct", "per_class"}


class HealthRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="image ids whose label a reviewer confirmed: reports mark them kept",
    )


# -- rollouts ------------------------------------------------------------------------------


class RolloutRequest(BaseModel):
    """A candidate version in front of ``share`` of the traffic (``canary``) or beside it
    (``shadow``), with the bounds that stop it."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="the candidate version")
    mode: Literal["canary", "shadow"]
    share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="canary: the share of requests the candidate answers; shadow: the share"
        " it is also run on (each one costs a second inference)",
    )
    max_error_rate: float | None = Field(
        0.05, ge=0, le=1, description="stop when the candidate's error rate passes this"
    )
    max_p99_ms: float | None = Field(
        None, gt=0, description="stop when the candidate's p99 latency (ms) passes this"
    )
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="stop when agreement with the active version falls under"
    )
    min_requests: int = Field(
        50, ge=1, le=1_000_000, description="judge the bounds after this many requests"
    )


class VersionFigures(BaseModel):
    requests: int
    errors: int
    error_rate: float | None
    latency_ms: dict[str, Any]
    compared: int
    agreement: float | None
    unknown_rate: float | None


class RolloutStatus(BaseModel):
    model: str
    id: str
    version: int  # the candidate
    baseline: int  # the version active when it began
    mode: str
    share: float
    status: str  # running | promoted | aborted | stopped | replaced
    reason: str | None = None
    started_at: str
    ended_at: str | None = None
    guards: dict[str, Any]
    replicas: int  # replicas whose figures are summed
    figures: dict[str, VersionFigures]  # version -> its live figures


# -- keys and audit ------------------------------------------------------------------------

# A rate, as the `limits` library reads it: "600/minute", "5 per day", "100/2 hours".
RATE = r"^[1-9][0-9]{0,8} ?(/|per) ?([1-9][0-9]{0,5} )?(second|minute|hour|day)s?$"
# A size, as pydantic's ByteSize reads it: "2GB", "500 MiB", "1000000".
SIZE = r"^[0-9]{1,15}(\.[0-9]{1,6})? ?([kKmMgGtTpP][iI]?[bB]|[bB])?$"
Rate = Annotated[str, Field(pattern=RATE, max_length=40)]


class KeyLimits(BaseModel):
    """A key's own quotas instead of the service's."""

    model_config = ConfigDict(extra="forbid")

    predict: Rate | None = Field(None, description='predictions, as a rate: "600/minute"')
    uploads: Rate | None = Field(None, description='uploads, as a rate: "50/day"')
    jobs: Rate | None = Field(None, description='fine-tuning jobs, as a rate: "5/day"')
    stored: str | None = Field(
        None, pattern=SIZE, max_length=40, description='bytes kept in datasets: "2GB"'
    )

    @field_validator("predict", "uploads", "jobs")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        from limits import parse

        if value is not None:
            try:
                parse(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a rate such as 600/minute") from None
        return value

    @field_validator("stored")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                TypeAdapter(ByteSize).validate_python(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a size such as 2GB") from None
        return value


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="what the key is for")
    scopes: list[Literal["predict", "train", "admin"]] = Field(min_length=1)
    models: list[Annotated[str, Field(pattern=NAME_REGEX)]] | None = Field(
        None, min_length=1, description="only these models (default all)"
    )
    limits: KeyLimits | None = Field(None, description="its own quotas instead of the service's")


class KeyInfo(BaseModel):
    id: str
    prefix: str  # cs_<id>: how the key begins
    name: str
    scopes: list[str]
    models: list[str] | None = None
    limits: dict[str, str] | None = None
    created_at: str
    revoked_at: str | None = None


class KeyCreated(KeyInfo):
    key: str  # shown this once


class Whoami(BaseModel):
    key_id: str | None  # "bootstrap", a key's id, or null (no key, or an open service)
    scopes: list[str]
    models: list[str] | None = None
    keys_on: bool  # false: an open service, every caller may do everything


class KeyList(BaseModel):
    keys: list[KeyInfo]


class AuditEntry(BaseModel):
    seq: int
    at: str
    key_id: str | None  # "bootstrap": CONVSERVE_API_KEY; null: no key
    method: str
    path: str
    status: int
    client: str | None = None
    scope: str


class AuditPage(BaseModel):
    items: list[AuditEntry]
    total: int
    offset: int
    limit: int

"""Training parameters, validated once for the CLI and the HTTP API alike."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.nets.transfer import BASES


class TrainParams(BaseModel):
    """What `python -m app train` and `POST /finetune` take (beyond the data)."""

    model_config = ConfigDict(extra="forbid")

    base: Literal["mobilenet_v2", "resnet50"] = "mobilenet_v2"
    epochs: int = Field(5, ge=1, le=500, description="epochs of the head on a frozen base")
    fine_tune_epochs: int = Field(5, ge=0, le=500, description="epochs of fine-tuning after")
    fine_tune_at: int | None = Field(
        None, ge=0, description="first base layer to fine-tune; default 120 for MobileNetV2"
    )
    image_size: int = Field(224, ge=32, le=512)
    batch_size: int = Field(32, ge=1, le=512)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    fine_tune_learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="default: learning_rate / 10"
    )
    validation_split: float = Field(0.2, ge=0.05, le=0.5)
    augment: bool = True
    from_scratch: bool = False
    seed: int = Field(42, ge=0, le=2**31 - 1)

    @field_validator("fine_tune_at")
    @classmethod
    def _within_base(cls, value: int | None, info: ValidationInfo) -> int | None:
        base = info.data.get("base")
        if value is not None and base in BASES and value >= BASES[base].depth:
            raise ValueError(f"must be below {BASES[base].depth}, the number of layers of {base}")
        return value

    @property
    def resolved_fine_tune_at(self) -> int:
        if self.fine_tune_at is not None:
            return self.fine_tune_at
        return BASES[self.base].default_fine_tune_at

    @property
    def resolved_fine_tune_learning_rate(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate / 10

    @property
    def total_epochs(self) -> int:
        return self.epochs + (0 if self.from_scratch else self.fine_tune_epochs)

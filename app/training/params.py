"""Training parameters, validated once for the CLI and the HTTP API alike."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.nets.transfer import BASES, AugmentConfig

Flip = Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]


class TrainParams(BaseModel):
    """What `python -m app train` and `POST /finetune` take (beyond the data).

    Epoch counts are maxima: each phase stops early when the validation loss has not
    improved for ``early_stopping_patience`` epochs, or when the time budget runs out, and
    keeps the weights of its best epoch.
    """

    model_config = ConfigDict(extra="forbid")

    base: Literal["mobilenet_v2", "resnet50"] = "mobilenet_v2"
    epochs: int = Field(
        50,
        ge=1,
        le=500,
        description="most epochs of the head on a frozen base (all layers from scratch)",
    )
    fine_tune_epochs: int = Field(20, ge=0, le=500, description="most epochs of fine-tuning")
    fine_tune_at: int | Literal["auto"] = Field(
        "auto",
        description="first base layer to fine-tune, or auto: chosen from the images per class",
    )
    image_size: int = Field(224, ge=32, le=512)
    batch_size: int = Field(32, ge=1, le=512)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    fine_tune_learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="default: learning_rate / 10"
    )
    validation_split: float = Field(0.2, ge=0.05, le=0.5)
    early_stopping_patience: int | None = Field(
        None,
        ge=0,
        le=100,
        description="epochs without a lower validation loss before a phase stops (0: never"
        " stop early); default 4, or 8 from scratch, whose validation loss is noisier",
    )
    max_minutes: float = Field(
        10, ge=0, le=7 * 24 * 60, description="time budget of the training (0: none)"
    )
    class_weight: Literal["auto", "balanced", "none"] = Field(
        "auto",
        description="balanced: weigh classes by their inverse frequency; auto: balanced when"
        " the largest class has more than twice the images of the smallest",
    )
    augment: bool = True
    flip: Flip = Field("horizontal", description="random mirroring")
    rotation: float = Field(0.05, ge=0, le=0.5, description="random rotation, in turns")
    zoom: float = Field(0.1, ge=0, le=0.9, description="random zoom in or out, a fraction")
    translation: float = Field(0.1, ge=0, le=0.5, description="random shift, a fraction")
    contrast: float = Field(0.1, ge=0, le=1, description="random contrast change, a fraction")
    brightness: float = Field(0.1, ge=0, le=1, description="random brightness shift, a fraction")
    from_scratch: bool = False
    seed: int = Field(42, ge=0, le=2**31 - 1)

    @field_validator("fine_tune_at")
    @classmethod
    def _within_base(cls, value: int | str, info: ValidationInfo) -> int | str:
        base = info.data.get("base")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("must be auto or a layer number of 0 or more")
            if base in BASES and value >= BASES[base].depth:
                raise ValueError(
                    f"must be below {BASES[base].depth}, the number of layers of {base}"
                )
        return value

    @property
    def resolved_fine_tune_learning_rate(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate / 10

    @property
    def resolved_early_stopping_patience(self) -> int:
        if self.early_stopping_patience is not None:
            return self.early_stopping_patience
        return 8 if self.from_scratch else 4

    @property
    def total_epochs(self) -> int:
        """The most epochs training can run (early stopping usually ends it sooner)."""
        return self.epochs + (0 if self.from_scratch else self.fine_tune_epochs)

    def augmentation(self) -> AugmentConfig | None:
        if not self.augment:
            return None
        return AugmentConfig(
            flip=None if self.flip == "none" else self.flip,
            rotation=self.rotation,
            zoom=self.zoom,
            translation=self.translation,
            contrast=self.contrast,
            brightness=self.brightness,
        )

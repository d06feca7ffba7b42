"""Training parameters, validated once for the CLI and the HTTP API alike."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.nets.catalog import ARCHITECTURES
from app.nets.transfer import BASES, AugmentConfig

# Every key of app.nets.catalog.ARCHITECTURES (a test keeps the two equal).
Base = Literal[
    "mobilenet_v2",
    "resnet50",
    "efficientnet_b0",
    "mobilenet",
    "vgg16",
    "googlenet",
    "alexnet",
    "lenet5",
]

Flip = Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]


class TrainParams(BaseModel):
    """What `python -m app train` and `POST /finetune` take (beyond the data).

    Epoch counts are maxima: each phase stops early when the validation loss has not
    improved for ``early_stopping_patience`` epochs, or when the time budget runs out, and
    keeps the weights of its best epoch.
    """

    model_config = ConfigDict(extra="forbid")

    base: Base = Field(
        "mobilenet_v2",
        description="the network (GET /architectures); lenet5, alexnet and googlenet have no"
        " ImageNet weights and train from scratch",
    )
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
    image_size: int = Field(
        224,
        ge=16,
        le=512,
        description="side of the input; default: the network's own (32 for"
        " lenet5, 227 for alexnet, else 224)",
    )
    batch_size: int = Field(32, ge=1, le=512)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    fine_tune_learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="default: learning_rate / 10"
    )
    lr_schedule: Literal["auto", "plateau", "decay"] = Field(
        "auto",
        description="plateau: divide the learning rate by 3.3 when the validation loss"
        " stalls; decay: lower it linearly to nothing over each phase's epochs or time;"
        " auto: decay from scratch, plateau for transfer",
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

    @model_validator(mode="before")
    @classmethod
    def _network_defaults(cls, data: object) -> object:
        # The network's own input size when none is given; from scratch for a network
        # without ImageNet weights, when nothing says otherwise.
        if isinstance(data, dict):
            arch = ARCHITECTURES.get(str(data.get("base", "mobilenet_v2")))
            if arch is not None:
                data = dict(data)
                data.setdefault("image_size", arch.default_size)
                if not arch.pretrained:
                    data.setdefault("from_scratch", True)
        return data

    @model_validator(mode="after")
    def _fits_the_network(self) -> TrainParams:
        arch = ARCHITECTURES[self.base]
        if self.image_size < arch.min_size:
            raise ValueError(
                f"image_size: {arch.title} needs images of at least {arch.min_size} pixels"
            )
        if not self.from_scratch and not arch.pretrained:
            raise ValueError(
                f"from_scratch: {arch.title} has no ImageNet weights in Keras; train it from"
                " scratch"
            )
        return self

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
    def resolved_lr_schedule(self) -> Literal["plateau", "decay"]:
        if self.lr_schedule != "auto":
            return self.lr_schedule
        return "decay" if self.from_scratch else "plateau"

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

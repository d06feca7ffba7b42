"""Training parameters, declared once: `TrainParams` is what ``POST /finetune``'s form,
the command's options (`add_arguments`), the console's form and the docs' table
(`markdown_table`) are made from, and what validates them all.

This module imports neither Keras nor the service: the ``convserve`` command uses it."""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.names import LABEL_PATTERN, LABEL_RULE
from app.nets.catalog import ARCHITECTURES, BASES

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
    batch_size: int = Field(32, ge=1, le=512, description="images per training step")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="the head's learning rate")
    fine_tune_learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="default: learning_rate / 10"
    )
    lr_schedule: Literal["auto", "plateau", "decay"] = Field(
        "auto",
        description="plateau: divide the learning rate by 3.3 when the validation loss"
        " stalls; decay: lower it linearly to nothing over each phase's epochs or time;"
        " auto: decay from scratch, plateau for transfer",
    )
    validation_split: float = Field(
        0.2, ge=0.05, le=0.5, description="share of each class held out to steer and report"
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=0,
        le=100,
        description="epochs without a lower validation loss before a phase stops (0: never"
        " stop early); default 4, or 8 from scratch, whose validation loss is noisier",
    )
    refit: Literal["auto", "on", "off"] = Field(
        "auto",
        description="after the validation split has chosen the epochs, train again on"
        " every image (validation included) for those epochs and serve that model (from"
        " the head when fine-tuning follows it); auto: under 100 training images per class,"
        " when the time budget allows",
    )
    max_minutes: float = Field(
        10, ge=0, le=7 * 24 * 60, description="time budget of the training (0: none)"
    )
    class_weight: Literal["auto", "balanced", "none"] = Field(
        "auto",
        description="balanced: weigh classes by their inverse frequency; auto: balanced when"
        " the largest class has more than twice the images of the smallest",
    )
    augment: bool = Field(True, description="random changes to the training images")
    flip: Flip = Field("horizontal", description="random mirroring")
    rotation: float = Field(0.05, ge=0, le=0.5, description="random rotation, in turns")
    zoom: float = Field(0.1, ge=0, le=0.9, description="random zoom in or out, a fraction")
    translation: float = Field(0.1, ge=0, le=0.5, description="random shift, a fraction")
    contrast: float = Field(0.1, ge=0, le=1, description="random contrast change, a fraction")
    brightness: float = Field(0.1, ge=0, le=1, description="random brightness shift, a fraction")
    from_scratch: bool = Field(
        False,
        description="random weights, all layers trained (lenet5, alexnet and googlenet always are)",
    )
    seed: int = Field(
        42, ge=0, le=2**31 - 1, description="seeds the split, the shuffles and the augmentation"
    )
    abstain_keep_share: float = Field(
        0.97,
        ge=0.5,
        le=1.0,
        description="the version answers unknown below the score that keeps this share of"
        " its validation images (1: never unknown)",
    )
    abstain_score: Literal["nearest", "top_score"] = Field(
        "nearest",
        description="what the version answers unknown by: nearest, the similarity of an"
        " image's features to the nearest training image's (turns away more of what it"
        " was not taught); top_score, the calibrated top score",
    )
    negative_class: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="a class of photos of none of the others (Custom Vision's negative tag):"
        " a prediction of it is answered as unknown",
    )
    label_health: bool = Field(
        True,
        description="after training, look for images whose label the model doubts, near"
        " duplicates and confused classes (the dataset's label-health report)",
    )

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

    @field_validator("negative_class")
    @classmethod
    def _a_class_name(cls, value: str | None) -> str | None:
        if value is not None and not LABEL_PATTERN.match(value):
            raise ValueError(f"{value!r} is not usable: {LABEL_RULE}")
        return value

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


# -- the declaration, read for the command line and the docs -----------------------------------


def _members(annotation: Any) -> list[Any]:
    """The types of a field: ``int | Literal["auto"]`` gives ``[int, Literal["auto"]]``."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for m in get_args(annotation) if m is not type(None)]
    return [annotation]


def _choices(annotation: Any) -> list[str]:
    return [str(v) for m in _members(annotation) if get_origin(m) is Literal for v in get_args(m)]


def _number_type(annotation: Any) -> type[int] | type[float] | None:
    numbers = [m for m in _members(annotation) if m in (int, float)]
    return numbers[0] if numbers else None


def _bounds(name: str) -> tuple[float | None, bool, float | None]:
    """(minimum, whether the minimum itself is refused, maximum) of a numeric field."""
    low: Any = None
    high: Any = None
    above = False
    for rule in TrainParams.model_fields[name].metadata:
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            low, above = rule.gt, True
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
    return low, above, high


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def bounds_text(name: str) -> str:
    """``1 to 500``, ``above 0 to 1.0``: a numeric field's range in words."""
    low, above, high = _bounds(name)
    if low is None and high is None:
        return ""
    parts = [f"{'above' if above else 'from'} {_number(low)}" if low is not None else ""]
    parts.append(f"to {_number(high)}" if high is not None else "")
    return " ".join(p for p in parts if p)


def _argument_type(name: str) -> Callable[[str], Any]:
    """An argparse type that reads the field's number, or one of its words, and refuses
    what the field refuses with argparse's own error."""
    annotation = TrainParams.model_fields[name].annotation
    number, words = _number_type(annotation), _choices(annotation)
    low, above, high = _bounds(name)

    def parse(text: str) -> Any:
        if text in words:
            return text
        if number is None:
            return text
        try:
            value = number(text)
        except ValueError:
            wanted = "a whole number" if number is int else "a number"
            also = f" or {' or '.join(words)}" if words else ""
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}{also}") from None
        if (low is not None and (value < low or (above and value == low))) or (
            high is not None and value > high
        ):
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bounds_text(name)})")
        return value

    parse.__name__ = number.__name__ if number is not None else "str"
    return parse


def default_text(name: str) -> str:
    """A field's default in words (empty when its description says it)."""
    field = TrainParams.model_fields[name]
    if "default" in (field.description or ""):
        return ""
    value = field.default
    if isinstance(value, bool):
        return "on" if value else "off"
    return "" if value is None else _number(value) if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training parameters as command options (``--fine-tune-at``, ``--no-augment``):
    for ``python -m app train`` and ``convserve finetune``."""
    for name, field in TrainParams.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = default_text(name)
        help_text = (field.description or "") + (f" (default {default})" if default else "")
        if field.annotation is bool:
            if field.default:
                help_text = f"no {field.description}"
            # A switch turns a default off (--no-augment) or on (--from-scratch).
            flag = f"--no-{flag[2:]}" if field.default else flag
            parser.add_argument(
                flag,
                dest=name,
                action="store_const",
                const=not field.default,
                default=None,
                help=help_text,
            )
            continue
        choices = _choices(field.annotation)
        if choices and _number_type(field.annotation) is None:
            parser.add_argument(flag, dest=name, choices=choices, help=help_text)
        else:
            parser.add_argument(
                flag,
                dest=name,
                type=_argument_type(name),
                metavar=name.upper(),
                help=help_text + (f"; {bounds_text(name)}" if bounds_text(name) else ""),
            )


def from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The training parameters given on the command line (those not given left out)."""
    given = {name: getattr(args, name, None) for name in TrainParams.model_fields}
    return {k: v for k, v in given.items() if v is not None}


def markdown_table() -> str:
    """The parameters as the docs' table: form field, option, default, range, meaning."""
    rows = [
        "| form field | command option | default | range or values | what it does |",
        "|---|---|---|---|---|",
    ]
    for name, field in TrainParams.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            flag = f"--no-{flag[2:]}" if field.default else flag
        values = ", ".join(f"`{c}`" for c in _choices(field.annotation))
        span = bounds_text(name)
        allowed = "; ".join(p for p in (span, values) if p)
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{name}` | `{flag}` | {default_text(name) or 'see text'} | {allowed} |"
            f" {description} |"
        )
    return "\n".join(rows) + "\n"

"""What the foreign protocols share: decoding their inputs and naming versions. They run
the images through `app.serving.inference`, as ``/predict`` does."""

from __future__ import annotations

import base64
import binascii

from app.errors import ConvserveError
from app.serving.inference import bad_input
from app.serving.manager import ModelManager

# Version labels a client may use instead of a number (TF Serving's labels/...).
LABELS = ("active", "latest")


def b64decode(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise bad_input(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_input(f"{where}: not valid base64", "invalid_base64") from None


def parse_version(manager: ModelManager, name: str, text: str | None) -> int | None:
    """A path's version (a number, or a label) as a version number; None for the active."""
    if text is None or text == "":
        return None
    if (text.isascii() and text.isdigit()) and int(text) >= 1:
        return int(text)
    if text == "active":
        return None
    if text == "latest":
        versions = manager.registry.versions(name)
        if versions:
            return versions[-1]
    raise ConvserveError(
        "version_not_found",
        f"model {name!r} has no version or label {text!r} (labels: {', '.join(LABELS)})",
        404,
    )

"""``POST /predict``: classify one or more uploaded images."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, File, Query, Request, UploadFile

from app.api.deps import Manager, Metrics, Predict, SettingsDep
from app.errors import ConvserveError
from app.schemas import ImagePrediction, Label, PredictResponse
from app.serving.inference import Inference, ranked
from app.serving.tta import TTA

router = APIRouter(tags=["predict"])


def _check_multipart(request: Request) -> None:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ConvserveError(
            "unsupported_media_type",
            "send the images as multipart/form-data 'file' parts",
            415,
        )


@router.post("/predict", response_model=PredictResponse, dependencies=[Predict])
async def predict(
    request: Request,
    manager: Manager,
    metrics: Metrics,
    settings: SettingsDep,
    file: list[UploadFile] = File(..., min_length=1, description="one or more images"),
    model: str | None = Query(None, description="model name; default: the default model"),
    version: int | None = Query(None, ge=1, description="version; default: the active one"),
    top_k: int = Query(5, ge=1, le=1000),
    abstain: bool = Query(
        True,
        description="answer unknown under the version's threshold (false: never unknown)",
    ),
    threshold: float | None = Query(
        None,
        ge=0,
        le=1,
        description="your own threshold on the top score, instead of the version's",
    ),
    explain: Literal["gradcam"] | None = Query(
        None,
        description="gradcam: a heat map per image of where the answer came from (at most"
        " CONVSERVE_MAX_EXPLAINED_IMAGES images)",
    ),
    explain_class: str | None = Query(
        None, description="the class to explain (default each image's top class)"
    ),
    tta: TTA = Query(
        "none",
        description="test-time augmentation: flip averages the image and its mirror (2"
        " views); crops the centre and corner crops of the image at 8/7 scale and their"
        " mirrors (10 views)",
    ),
) -> PredictResponse:
    name = model or settings.default_model
    job = Inference(manager, metrics, settings, "convserve", name, abstain, threshold)
    async with job.counted():
        _check_multipart(request)
        if explain is not None:
            job.check_explain(len(file))
        outcome = await job.uploads(version, file, tta)
        explanations = (
            await job.explain(outcome, job.blobs, explain_class)
            if explain is not None
            else [None] * len(file)
        )
    similarities: list[float | None] = [None] * len(file)
    if outcome.similarity is not None:
        similarities = list(outcome.similarity)
    return PredictResponse(
        model=name,
        version=outcome.loaded.version,
        predictions=[
            ImagePrediction(
                filename=f.filename,
                unknown=unknown,
                similarity=None if similarity is None else round(similarity, 6),
                explanation=explanation,
                top=[
                    Label(label=label, index=index, score=score)
                    for index, label, score in ranked(outcome.loaded, row, top_k)
                ],
            )
            for f, row, unknown, similarity, explanation in zip(
                file,
                outcome.rows,
                outcome.unknown,
                similarities,
                explanations,
                strict=True,
            )
        ],
    )

"""``/datasets/check``: the dataset check a fine-tuning job runs, without the job."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from app.api.deps import Admin, SettingsDep
from app.jobs.intake import check_only
from app.schemas import DatasetReport

router = APIRouter(prefix="/datasets", tags=["finetune"])


@router.post("/check", response_model=DatasetReport, dependencies=[Admin])
async def check_dataset(
    settings: SettingsDep,
    dataset: UploadFile = File(..., description=".zip, .tar or .tar.gz, one folder per class"),
    validation_split: float = Form(0.2, ge=0.05, le=0.5),
) -> Any:
    """Check an archive as ``POST /finetune`` would (same errors), and report its classes,
    images per class, skipped files with the reason, exact duplicates and warnings
    (imbalance, few images). Nothing is kept."""
    return await asyncio.to_thread(check_only, settings, dataset.file, validation_split)

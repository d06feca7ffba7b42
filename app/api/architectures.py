"""``/architectures``: the networks training accepts as ``base``."""

from __future__ import annotations

from fastapi import APIRouter

from app.nets.catalog import ARCHITECTURES, BASES, Architecture
from app.schemas import ArchitectureInfo, ArchitectureList

router = APIRouter(prefix="/architectures", tags=["models"])


def architecture_info(arch: Architecture) -> ArchitectureInfo:
    spec = BASES.get(arch.name)
    return ArchitectureInfo(
        name=arch.name,
        title=arch.title,
        paper=arch.paper,
        year=arch.year,
        input_size=arch.input_size,
        parameters=arch.parameters,
        paper_parameters=arch.paper_parameters,
        default_image_size=arch.default_size,
        min_image_size=arch.min_size,
        pretrained=arch.pretrained,
        weights_cached=arch.weights_cached(),
        from_scratch_only=not arch.pretrained,
        base_layers=None if spec is None else spec.depth,
        fine_tune_at=None
        if spec is None
        else {"last_stage": spec.top_stage, "upper_half": spec.upper_half},
    )


@router.get("", response_model=ArchitectureList)
def list_architectures() -> ArchitectureList:
    """Every network ``/finetune`` accepts as ``base``, in the order of their papers, with
    input size, parameter count (ours at the paper's input size) and whether ImageNet
    weights exist for it (and are on this machine)."""
    ordered = sorted(ARCHITECTURES.values(), key=lambda a: (a.year, a.name))
    return ArchitectureList(architectures=[architecture_info(a) for a in ordered])

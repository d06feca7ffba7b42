"""On real photos: a MobileNetV2 trained on five SIGNS classes meets the sixth (never
taught) and images far from photos; it keeps the known test photos and turns some of the
others away as unknown. Floors a little under the figures measured with bench/unknown.py
(held-out class 0, docs/benchmarks.md)."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import MOBILENET_WEIGHTS, SIGNS_DIR
from tests.jobs.service import ROOT


@pytest.mark.slow
@pytest.mark.skipif(not SIGNS_DIR.is_dir(), reason=f"needs the SIGNS photos in {SIGNS_DIR}")
@pytest.mark.skipif(
    not MOBILENET_WEIGHTS.is_file(), reason=f"needs the MobileNetV2 weights in {MOBILENET_WEIGHTS}"
)
def test_a_class_never_taught_is_answered_unknown_more_often_than_the_known_ones(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from accuracy import split_signs
    from unknown import one_holdout

    held, pool, _ = split_signs(tmp_path)
    result = one_holdout(tmp_path, held, pool, "0", max_minutes=4)
    default = next(r for r in result["by_keep_share"] if r["keep_share"] == 0.97)
    print(result)  # shown when an assertion fails
    # Measured in two runs (a 4-minute budget runs a different number of epochs each
    # time): known accuracy 0.922; known kept 0.950; held-out class rejected 0.183;
    # generated images rejected 0.708 and 0.542; AUROC 0.869 (held-out), 0.969 (generated).
    assert result["known_accuracy"] >= 0.88
    assert default["known_kept"] >= 0.9
    assert default["holdout_rejected"] >= 0.1
    assert default["generated_rejected"] >= 0.4
    assert result["auroc"] >= 0.75 and result["auroc_generated"] >= 0.8

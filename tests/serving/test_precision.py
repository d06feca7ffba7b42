"""Each version served at the fastest precision that keeps its accuracy (app.serving.precision)."""

import hashlib
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.data.heldout import HELDOUT_FILE, HeldOut, read_heldout
from app.data.images import load_image
from app.main import create_app
from app.serving.openvino_backend import bf16_supported, int8_ir_path
from app.serving.precision import choose, study, study_or_fallback, wilson_upper
from app.serving.predictor import KerasPredictor
from app.storage.registry import ModelRegistry
from app.training.params import TrainParams
from app.training.trainer import Hooks, train
from tests.helpers import image_bytes, last_json, make_dataset, pattern_image, run_cli

pytest.importorskip("openvino")


def _row(accuracy: float, differ: int, speed: float, n: int = 472) -> dict:
    return {
        "accuracy": accuracy,
        "disagreements": differ,
        "agreement_images": n,
        "agreement": 1 - differ / n,
        "disagreement_upper": wilson_upper(differ, n),
        "images_per_second": speed,
    }


def test_the_rule_picks_int8_when_it_keeps_the_accuracy():
    table = {"f32": _row(0.977, 0, 60), "bf16": _row(0.977, 1, 120), "int8": _row(0.972, 3, 220)}
    chosen, reason = choose(table, 0.977)
    assert chosen == "int8"
    assert reason.startswith("int8: the fastest")


def test_the_rule_keeps_f32_when_the_lower_precisions_lose_accuracy():
    # 0.99 x 0.977 = 0.967: both lower precisions are under it.
    table = {"f32": _row(0.977, 0, 60), "bf16": _row(0.963, 4, 120), "int8": _row(0.940, 9, 220)}
    chosen, reason = choose(table, 0.977)
    assert chosen == "f32"
    assert "int8 rejected: accuracy 0.9400" in reason and "bf16 rejected: accuracy 0.9630" in reason


def test_a_precision_whose_accuracy_holds_only_by_chance_is_refused():
    # int8 breaks 7 answers and fixes as many: the same accuracy, but 12 of 472 differ.
    table = {"f32": _row(0.977, 0, 60), "bf16": _row(0.977, 2, 120), "int8": _row(0.977, 12, 220)}
    chosen, reason = choose(table, 0.977)
    assert chosen == "bf16"
    assert "int8 rejected: 12 of 472 answers differ" in reason


def test_a_precision_that_could_not_be_measured_is_skipped_with_its_reason():
    table = {
        "f32": _row(0.9, 0, 60),
        "bf16": {"error": "this CPU has no bf16 instructions"},
        "int8": {"error": "ModuleNotFoundError: No module named 'nncf'"},
    }
    chosen, reason = choose(table, 0.9)
    assert chosen == "f32"
    assert "int8 not measured: ModuleNotFoundError" in reason
    assert "bf16 not measured: this CPU has no bf16" in reason


def test_the_disagreement_bound_needs_enough_images():
    assert wilson_upper(0, 472) < 0.006
    assert wilson_upper(4, 472) < 0.02 < wilson_upper(5, 472)
    assert wilson_upper(0, 100) > 0.02  # too few images: nothing lower than f32 passes


def _add_heldout(registry: ModelRegistry, name: str = "toy", version: int = 1) -> HeldOut:
    """A held-out set labelled with the version's own Keras answers (accuracy 1.0), on
    random pixels; 300 images in all, enough for the disagreement bound."""
    path = registry.model_path(name, version)
    images = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    keras_p = KerasPredictor(path, 32)
    keras_p.load()
    labels = np.argmax(keras_p.predict(images), axis=-1)
    heldout = HeldOut(images[:150], labels[:150], images[150:])
    heldout.save(path.parent)
    return heldout


def _served(settings_for, **overrides) -> dict:
    settings = settings_for(backend="openvino", **overrides)
    with TestClient(create_app(settings)) as c:
        info = c.get("/models/toy").json()
        png = image_bytes(pattern_image("checks", 40), "PNG")
        assert c.post("/predict", files={"file": ("a.png", png)}).status_code == 200
        info["page"] = c.get("/console/models/toy").text
    return info


@pytest.mark.slow  # starts a service
def test_the_study_measures_each_precision_and_auto_serves_its_choice(registry, settings_for):
    heldout = _add_heldout(registry)
    result = study(registry.model_path("toy", 1), 32, heldout)
    table = result["table"]
    assert result["reference"]["accuracy"] == 1.0 and result["images"] == 150
    assert table["f32"]["accuracy"] == 1.0 and table["f32"]["disagreements"] == 0
    assert table["int8"]["agreement_images"] == 300 and table["int8"]["images_per_second"] > 0
    assert int8_ir_path(registry.model_path("toy", 1)).exists()
    assert result["chosen"] == choose(table, 1.0)[0]
    # The study keeps no compiled model: only serving caches the precision it serves.
    compiled = registry.version_dir("toy", 1) / "openvino" / "compiled"
    assert not compiled.exists() or not any(compiled.iterdir())
    registry.update_metadata("toy", 1, {"precision_study": result})

    info = _served(settings_for)  # CONVSERVE_INFERENCE_PRECISION defaults to auto
    assert info["precision"] == result["chosen"]
    assert any(compiled.iterdir())
    assert info["precision_reason"].startswith("auto: " + result["chosen"])
    assert info["version_details"][0]["precision_study"]["table"].keys() == table.keys()
    # The console's model page shows the table and the choice.
    page = info["page"]
    assert 'id="precision-study"' in page and f"<strong>{result['chosen']}</strong>" in page
    assert f"{table['int8']['disagreements']} of 300" in page


@pytest.mark.slow  # a service or a training each; the rule tests above are fast
@pytest.mark.parametrize("chosen", ["f32", "int8"])
def test_auto_serves_what_the_versions_study_chose(registry, settings_for, chosen):
    _add_heldout(registry)
    study_result = {"chosen": chosen, "reason": f"{chosen}: stub", "table": {}}
    registry.update_metadata("toy", 1, {"precision_study": study_result})
    info = _served(settings_for)
    assert (info["precision"], info["precision_reason"]) == (chosen, f"auto: {chosen}: stub")
    # int8 was quantized at load from the version's calibration images, and kept.
    assert int8_ir_path(registry.model_path("toy", 1)).exists() == (chosen == "int8")


@pytest.mark.slow  # starts a service
def test_auto_serves_f32_for_a_version_without_a_study(registry, settings_for):
    info = _served(settings_for)
    assert info["precision"] == "f32"
    assert "no precision study" in info["precision_reason"]


@pytest.mark.slow  # a service or a training each; the rule tests above are fast
def test_a_forced_precision_is_obeyed(registry, settings_for):
    _add_heldout(registry)
    stub = {"chosen": "f32", "reason": "f32: stub", "table": {}}
    registry.update_metadata("toy", 1, {"precision_study": stub})
    assert _served(settings_for, inference_precision="int8")["precision"] == "int8"
    info = _served(settings_for, inference_precision="bf16")
    assert info["precision"] == ("bf16" if bf16_supported() else "f32")
    assert info["precision_reason"].startswith("CONVSERVE_INFERENCE_PRECISION=bf16")


@pytest.mark.slow  # a service or a training each; the rule tests above are fast
@pytest.mark.parametrize("heldout", ["none", "damaged"])
def test_forced_int8_without_calibration_images_serves_f32_saying_why(
    registry, settings_for, heldout
):
    if heldout == "damaged":
        (registry.version_dir("toy", 1) / HELDOUT_FILE).write_bytes(b"PK\x03\x04 cut short")
    info = _served(settings_for, inference_precision="int8")
    assert info["precision"] == "f32"
    assert "int8 needs calibration images" in info["precision_reason"]


@pytest.mark.slow  # a service or a training each; the rule tests above are fast
def test_a_quantizer_that_fails_falls_back_with_the_reason(registry, monkeypatch):
    import nncf

    heldout = _add_heldout(registry)

    def refuse(*args, **kwargs):
        raise RuntimeError("layer conv_1 will not quantize")

    monkeypatch.setattr(nncf, "quantize", refuse)
    result = study_or_fallback(registry.model_path("toy", 1), 32, heldout)
    assert "layer conv_1 will not quantize" in result["table"]["int8"]["error"]
    assert result["chosen"] in ("bf16", "f32")
    assert "int8 not measured: int8 quantization failed" in result["reason"]

    monkeypatch.setitem(sys.modules, "nncf", None)  # NNCF not installed
    result = study_or_fallback(registry.model_path("toy", 1), 32, heldout)
    assert (
        "No module named 'nncf'" in result["table"]["int8"]["error"]
        or "nncf" in (result["table"]["int8"]["error"])
    )


@pytest.mark.slow  # a service or a training each; the rule tests above are fast
def test_a_trained_version_keeps_its_held_out_set_and_study(tmp_path):
    data = make_dataset(tmp_path / "data", classes=("hstripes", "vstripes"), per_class=90, size=32)
    registry = ModelRegistry(tmp_path / "models")
    params = TrainParams(
        base="lenet5",
        from_scratch=True,
        image_size=32,
        epochs=2,
        batch_size=16,
        seed=1,
        refit="off",  # the held-out set is the validation split the served model never saw
    )
    lines: list[str] = []
    result = train(
        data,
        "stripes",
        params,
        registry,
        tmp_path / "ws",
        weights=None,
        hooks=Hooks(log=lines.append),
        study=True,
    )
    folder = registry.version_dir("stripes", result.version)
    assert (folder / HELDOUT_FILE).is_file()
    heldout = read_heldout(folder)
    assert heldout is not None
    meta = registry.metadata("stripes", result.version)
    # The validation images, each exactly the pixels serving decodes from a dataset file.
    assert len(heldout.images) == meta["metrics"]["images"] == 36
    counts = np.array(meta["metrics"]["confusion_matrix"]).sum(axis=1)
    assert np.bincount(heldout.labels, minlength=2).tolist() == counts.tolist()
    decoded = {
        hashlib.sha1(load_image(p.read_bytes(), 32).tobytes()).hexdigest()
        for p in data.rglob("*")
        if p.is_file()
    }
    kept = [*heldout.images, *heldout.calibration]
    assert all(hashlib.sha1(img.tobytes()).hexdigest() in decoded for img in kept)
    assert len(heldout.calibration) == 144  # every training image (under the cap of 300)
    assert meta["heldout"] == {"images": 36, "calibration_images": 144}
    found = meta["precision_study"]
    assert found["chosen"] in ("f32", "bf16", "int8") and set(found["table"]) == {
        "f32",
        "bf16",
        "int8",
    }
    assert any("precision study chose" in line for line in lines)


@pytest.mark.slow  # a service or a training each; the rule tests above are fast
def test_the_study_command_measures_a_version_on_labelled_images(tmp_path):
    from tests.helpers import write_toy_version

    registry = ModelRegistry(tmp_path / "models")
    write_toy_version(registry, "shapes", ["checks", "hstripes"], seed=0)
    r = run_cli(tmp_path, "study", "--model", "shapes")
    assert r.returncode == 2 and last_json(r.stdout)["code"] == "no_heldout_images"
    data = make_dataset(tmp_path / "data", classes=("checks", "hstripes"), per_class=40, size=32)
    r = run_cli(tmp_path, "study", "--model", "shapes:1", "--images", str(data))
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["version"] == 1 and out["images"] == 40 and out["calibration_images"] == 40
    meta = registry.metadata("shapes", 1)
    assert meta["precision_study"]["chosen"] == out["chosen"]
    assert (registry.version_dir("shapes", 1) / HELDOUT_FILE).is_file()
    bad = make_dataset(tmp_path / "bad", ("checks",), per_class=2, names=("circles",))
    r = run_cli(tmp_path, "study", "--model", "shapes", "--images", str(bad))
    assert r.returncode == 2 and "'circles' is not a class" in last_json(r.stdout)["error"]


@pytest.mark.slow  # a service or a training each; the rule tests above are fast
@pytest.mark.parametrize(
    "depthwise, second",
    [
        (True, "depthwise convolutions kept in f32"),
        (False, "the first convolution and the classifier kept in f32"),
    ],
    ids=["depthwise", "plain"],
)
def test_int8_tries_keeping_the_sensitive_layers_in_f32_when_it_fails(
    tmp_path, monkeypatch, depthwise, second
):
    import keras
    import openvino as ov

    import app.serving.precision as precision
    from app.storage.registry import MODEL_FILE

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    if depthwise:
        x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    else:
        x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    registry = ModelRegistry(tmp_path / "models")
    meta = {"class_names": ["a", "b"], "image_size": 32}
    registry.write_version("dw", lambda folder: model.save(folder / MODEL_FILE), meta)
    heldout = _add_heldout(registry, "dw")
    monkeypatch.setattr(precision, "passes", lambda row, ref: (False, "refused for the test"))
    model_path = registry.model_path("dw", 1)
    row = study(model_path, 32, heldout)["table"]["int8"]
    recipes = {row["recipe"], row["also_tried"]["recipe"]}
    assert recipes == {"every convolution int8", second}
    # The one kept is the one with fewer differing answers (the first on a tie).
    assert row["disagreements"] <= row["also_tried"]["disagreements"]
    int8 = int8_ir_path(model_path)
    assert int8.exists()
    if not depthwise:
        # Each recipe's int8 model: with every layer quantized, each convolution and the
        # classifier take int8 weights (NNCF's "fq_weights") or a FakeQuantize input; with
        # the ends kept in f32, the first convolution and the classifier take neither, and
        # the convolution between them still does.
        from app.serving.openvino_backend import quantize_to_int8

        def quantized_inputs(recipe: str) -> dict[str, bool]:
            quantize_to_int8(model_path, heldout.calibration, recipe, replace=True)
            model = ov.Core().read_model(str(int8))
            return {
                op.get_friendly_name(): any(
                    source.get_type_name() == "FakeQuantize"
                    or "fq_weights" in source.get_friendly_name()
                    for source in (i.get_source_output().get_node() for i in op.inputs())
                )
                for op in model.get_ordered_ops()
                if op.get_type_name() in ("Convolution", "MatMul")
            }

        every, ends = quantized_inputs("all"), quantized_inputs("ends_f32")
        first_conv, second_conv, classifier = every
        assert every[first_conv] and every[second_conv] and every[classifier]
        assert not ends[first_conv] and ends[second_conv] and not ends[classifier]

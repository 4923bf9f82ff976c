"""Image encoders: real weights, real photos, the registry and its errors."""
import importlib

import numpy as np
import pytest
import torch

from bench.photos import skimage_photos
from shared.encoding import image_models
from shared.encoding.compiled_trunks import CompiledTrunk
from shared.store.catalog import IMAGE_MODEL_DIMS
from shared.runtime.config import Settings
from shared.errors import ModelUnavailableError
from shared.encoding.imagedecode import decode_image, resize_for_model
from shared.encoding.precision import resolve_precision

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
PHOTOS = {p.name: p for p in skimage_photos()}


def model_input(name: str) -> np.ndarray:
    return resize_for_model(decode_image(PHOTOS[name].read_bytes()))


@pytest.fixture(scope="module")
def lite0():
    return image_models.create_image_model("efficientnet_lite0")


def test_registry_builds_each_model_once(lite0):
    assert image_models.create_image_model("efficientnet_lite0") is lite0
    assert set(image_models.available_image_models()) == set(IMAGE_MODEL_DIMS)
    assert lite0.dim == IMAGE_MODEL_DIMS["efficientnet_lite0"]


def test_cat_photo_top_classes_are_cats(lite0):
    enc = lite0.encode([model_input("chelsea"), model_input("coffee")])
    cat_top3 = set(np.argsort(-enc.probs[0])[:3].tolist())
    assert cat_top3 <= CAT_CLASSES, cat_top3
    assert int(np.argmax(enc.probs[1])) == 967  # espresso
    assert enc.features.shape == (2, 1280) and enc.features.dtype == np.float32
    assert np.allclose(np.linalg.norm(enc.features, axis=1), 1.0, atol=1e-5)
    assert np.allclose(enc.probs.sum(axis=1), 1.0, atol=1e-4)


def test_batches_give_the_same_features_as_single_images(lite0):
    imgs = [model_input("chelsea"), model_input("coffee"), model_input("rocket")]
    together = lite0.encode(imgs).features
    alone = np.concatenate([lite0.encode([img]).features for img in imgs])
    assert np.allclose(together, alone, atol=1e-4)


def test_wrong_input_shape_is_refused(lite0):
    with pytest.raises(ValueError):
        lite0.encode([np.zeros((100, 100, 3), np.uint8)])


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ModelUnavailableError, match="efficientnet_lite0"):
        image_models.create_image_model("vgg16")


def _with_settings(monkeypatch, **overrides):
    monkeypatch.setattr(image_models, "get_settings", lambda: Settings().with_overrides(overrides))


def test_resnet50_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    _with_settings(monkeypatch, resnet50_weights=tmp_path / "missing.pth")
    with pytest.raises(ModelUnavailableError, match="efficientnet_lite0"):
        image_models._resnet50()


def test_resnet50_loads_a_saved_state_dict(monkeypatch, tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    _with_settings(monkeypatch, resnet50_weights=path, device="cpu")
    model = image_models._resnet50()
    enc = model.encode([model_input("chelsea")])
    assert enc.features.shape == (1, 2048) and enc.probs.shape == (1, 1000)


# -- fast modes: every precision a collection may choose agrees with fp32 -------------------

def _all_photos() -> list[np.ndarray]:
    from bench.photos import foolbox_photos

    return [resize_for_model(decode_image(p.read_bytes())) for p in [*PHOTOS.values(), *foolbox_photos()]]


def _agreement(model, reference) -> np.ndarray:
    photos = _all_photos()
    return np.sum(model.encode(photos).features * reference.encode(photos).features, axis=1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_features_agree_with_fp32_on_real_photos(lite0, precision):
    cosine = _agreement(image_models.create_image_model("efficientnet_lite0", precision), lite0)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, (cosine.mean(), cosine.min())


def test_compiled_model_agrees_with_fp32_pads_odd_batches_and_loads_again(lite0, monkeypatch):
    # The precision a new collection gets on this machine (fp32 without AMX); the low precisions
    # also agree eagerly (above).
    compiled = image_models.create_image_model("efficientnet_lite0", resolve_precision(None), compile=True)
    cosine = _agreement(compiled, lite0)
    assert compiled.compiled, "compiling fell back to eager here"
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, (cosine.mean(), cosine.min())
    # 11 images: one batch of 8 and a remainder of 3 run image by image; 13: the remainder of 5
    # is padded to 8. Either way each image gets the features it gets alone.
    photos = _all_photos()
    alone = np.concatenate([compiled.encode([img]).features for img in photos[:13]])
    for n in (11, 13):
        together = compiled.encode(photos[:n]).features
        assert np.sum(together * alone[:n], axis=1).min() >= 0.995
    # A later start (another instance) loads the packages this one built (on the CPU) and
    # encodes the same.
    monkeypatch.setattr(CompiledTrunk, "_build", lambda *args: pytest.fail("built again"))
    again = image_models.create_image_model("efficientnet_lite0", resolve_precision(None), compile=True,
                                            batch=compiled.batch)
    assert again is not compiled
    assert np.allclose(again.encode(photos[:13]).features, compiled.encode(photos[:13]).features, atol=1e-5)


def test_compiled_kernels_go_to_the_data_dir_unless_the_operator_chose(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    importlib.import_module("torch._inductor.config")  # importing inductor writes its /tmp default

    _with_settings(monkeypatch, data_dir=tmp_path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    expected = str(tmp_path.resolve() / "torch-compile-cache")
    assert image_models.use_compile_cache() == expected
    assert cache_dir() == expected  # where inductor now writes
    chosen = str(tmp_path / "chosen")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", chosen)
    assert image_models.use_compile_cache() == chosen and cache_dir() == chosen

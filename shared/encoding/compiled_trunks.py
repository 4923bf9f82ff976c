"""Image-model trunks compiled ahead of time for the CPU: one AOTInductor package per batch shape,
built once and loaded by every later start.

On the CPU an image model is fast compiled with frozen weights (batch norms folded into the
convolutions, their weights prepacked), and torch.compile cannot cache a frozen graph: every
start compiled each batch shape again, 17-19 s a shape on 2 cores with a warm kernel cache. An
AOTInductor package takes about as long to build once (about 40 s a shape there) and a fraction
of a second to load.

A package is kept per model, precision, torch threads per call, weights (a digest), torch version
and CPU capability, and input shape, in `<compile cache>/aoti/`. One process builds it under a file
lock while any other that wants it waits and then loads it; it is written under a temporary name
and renamed into place, so a crash never leaves half a package. A package that does not load is
built again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, ContextManager

import torch

log = logging.getLogger(__name__)

Trunk = Callable[[torch.Tensor], torch.Tensor]


def weights_digest(module: torch.nn.Module) -> str:
    """A short digest of a module's weights and buffers (names included)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class CompiledTrunk:
    """A trunk that runs each input shape through its own AOTInductor package, built or loaded on
    the shape's first call; callable like the trunk itself. `runners`: calls that may run at once."""

    def __init__(self, trunk: torch.nn.Module, *, name: str, precision: str, threads: int, runners: int,
                 cache_dir: Path, autocast: Callable[[], ContextManager[object]]) -> None:
        self._trunk = trunk
        self._autocast = autocast
        self._runners = runners
        self._dir = cache_dir / "aoti"
        self._stem = (f"{name}-{precision}-t{threads}-{weights_digest(trunk)}"
                      f"-torch{torch.__version__}-{torch.backends.cpu.get_cpu_capability()}")
        self._loaded: dict[tuple[int, ...], Trunk] = {}
        self._lock = threading.Lock()

    def path(self, shape: tuple[int, ...]) -> Path:
        """Where the package of an input shape lives."""
        return self._dir / f"{self._stem}-{'x'.join(map(str, shape))}.pt2"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        run = self._loaded.get(shape)
        if run is None:
            with self._lock:
                run = self._loaded.get(shape) or self._load_or_build(x)
                self._loaded[shape] = run
        return run(x)

    def _load_or_build(self, example: torch.Tensor) -> Trunk:
        path = self.path(tuple(example.shape))
        self._dir.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, also by a process that dies
            if path.is_file():
                try:
                    return self._load(path)
                except Exception:
                    log.exception("the compiled package %s does not load; building it again", path.name)
            self._build(example, path)
            return self._load(path)

    def _load(self, path: Path) -> Trunk:
        from torch._inductor.package import load_package

        return load_package(str(path), num_runners=self._runners)

    def _build(self, example: torch.Tensor, path: Path) -> None:
        import torch._inductor.config as inductor_config

        started = time.monotonic()
        # Set here as well as per package: with the package's setting alone the convolutions ran
        # without prepacked weights, half as fast again.
        inductor_config.freezing = True
        partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.pt2")
        try:
            with torch.inference_mode(), self._autocast():
                exported = torch.export.export(self._trunk, (example,))
            torch._inductor.aoti_compile_and_package(exported, package_path=str(partial),
                                                     inductor_configs={"freezing": True})
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        log.info("compiled %s in %.1f s", path.name, time.monotonic() - started)

"""The C heap of a process, tuned to what it does: a CPU model keeps freed activation buffers,
a shard worker hands back the pages of large transient copies.

A forward pass at batch 8 allocates and frees activation tensors of 10-40 MB. glibc's malloc
serves blocks that large with mmap and returns them with munmap, so every pass faults its
buffers in again, zeroed by the kernel: a large share of the model's CPU time went to the kernel
and throughput dropped accordingly (README, Benchmarks); with the thresholds below there is no
kernel time to speak of. The thresholds hold for the main arena only: a thread with an arena of
its own (glibc gives threads their own, up to 8 per core) serves such blocks from 64 MB
sub-heaps that it unmaps again once they are free, so the encode worker's model thread kept
faulting until every thread shared the main arena. The price is that the process keeps up to
MALLOC_TRIM_BYTES of freed heap instead of handing it back, and that its threads share one
malloc lock.

The opposite need, in the shard workers, whose memory is the index itself. glibc raises its mmap
threshold each time it frees a block that it had mmapped (up to 32 MB), so that after the first
calibration copies and resizes the arrays that grow with the shard (a graph's or the store's
narrow arrays, hnswlib's lock arrays) come from the heap, and each resize leaves the old array
behind as a hole that later allocations only partly fill: some 1,700 bytes per item of free heap
in a 25,000-item shard. `hand_back_large_blocks()` fixes the threshold at HANDED_BACK_BYTES, so
that every larger block is mmapped and its pages go back to the system when it is freed. Fixing
it also fixes glibc's trim threshold, at 128 KB unless set: the heap would then hand back the
space of every transient block freed at its top and fault it in again, zeroed, at the next
search (a filtered exact search at 1M items spent more than half its CPU time in the kernel), so
the same call keeps KEPT_TOP_BYTES of free space at the heap's top. A search's own transient
blocks stay below HANDED_BACK_BYTES for the same reason (`shared.index.vector_store` scores in
chunks).
`release_free_memory()` hands the heap's free pages back (malloc_trim) after a large transient
copy, such as a calibration's copy of every vector.

`keep_freed_memory()` sets glibc's mmap and trim thresholds and one arena, once per process
(mallopt); with a C library without mallopt it does nothing. A thread that has allocated before
the call keeps its own arena, so the model workers call it first thing (`python -m workers`);
`shared.encoding.image_models` calls it too, for any other process that builds a CPU model.
The shard workers call `hand_back_large_blocks()` first thing instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MALLOC_MMAP_BYTES = 256 * 2**20  # blocks below this come from the heap, whose freed space is reused
MALLOC_TRIM_BYTES = 512 * 2**20  # free space at the heap's top kept up to this
HANDED_BACK_BYTES = 2**20        # shard workers: blocks from this size on are mmapped, given back when freed
KEPT_TOP_BYTES = 64 * 2**20      # shard workers: free space at the heap's top kept up to this

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Set the thresholds (the first call in a process); whether the C library took them."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        log.debug("no mallopt in this C library: the heap keeps its defaults")
        return False
    ok = all(mallopt(option, value) for option, value in (
        (M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES), (M_TRIM_THRESHOLD, MALLOC_TRIM_BYTES)))
    if not ok:
        log.warning("mallopt refused the heap thresholds: CPU models may spend time in page faults")
    return ok


@functools.cache
def hand_back_large_blocks() -> bool:
    """Fix the mmap threshold at HANDED_BACK_BYTES and the trim threshold at KEPT_TOP_BYTES (the
    first call in a process); whether the C library took them."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        log.debug("no mallopt in this C library: the heap keeps its defaults")
        return False
    ok = all(mallopt(option, value) for option, value in (
        (M_MMAP_THRESHOLD, HANDED_BACK_BYTES), (M_TRIM_THRESHOLD, KEPT_TOP_BYTES)))
    if not ok:
        log.warning("mallopt refused the heap thresholds: a shard may keep freed arrays resident")
    return ok


def release_free_memory() -> bool:
    """Return the heap's free pages to the system now; whether the C library could."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True

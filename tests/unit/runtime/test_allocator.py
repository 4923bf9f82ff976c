"""shared.runtime.allocator: with the heap thresholds set, a freed 38 MB tensor (the size of a big
activation at batch 8) is reused, not faulted in again, in the main thread and in a thread
started later, like the encode worker's model thread; with large blocks handed back, a shard
grown by the owner's batches keeps less memory resident per item, and its searches fault no
buffers in again (each case in a fresh interpreter: the settings are per process and stay set)."""
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys, threading
import torch
from shared.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []

def allocate():
    for _ in range(10):  # 38 MB, allocated, touched and freed: the heap grows to hold it
        torch.ones(38 * 2**18)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(20):
        torch.ones(38 * 2**18)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

allocate()
thread = threading.Thread(target=allocate)
thread.start()
thread.join()
print(*faults)
"""


def page_faults(mode: str) -> list[int]:
    """Minor page faults of 20 allocations in the main thread, then in a new thread."""
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    pages = 38 * 2**20 // 4096
    assert all(n > 5 * pages for n in page_faults("default"))  # each of the 20 buffers faults in again
    assert all(n < pages for n in page_faults("keep"))  # one heap block, reused


SHARD_PROGRAM = """
import sys
import numpy as np
from shared.runtime.allocator import hand_back_large_blocks
if sys.argv[1] == "hand-back":
    assert hand_back_large_blocks()
from shared.index.shard_index import ItemRecord, ShardIndex

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

rng = np.random.default_rng(0)
n, image_dim, text_dim = 4000, 1280, 50
index = ShardIndex(image_dim + text_dim, image_dim=image_dim)
before = resident()
for start in range(0, n, 256):  # the owner's batches; the shard calibrates at 1000 and 2000 items
    vectors = np.abs(rng.standard_normal((min(256, n - start), image_dim + text_dim), np.float32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"syn-{i}" for i in range(start, start + len(vectors))]
    index.upsert(ids, vectors, [ItemRecord(i, metadata={"bucket": j % 100}) for j, i in enumerate(ids, start)])
print((resident() - before) / n)
"""


def shard_bytes_per_item(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SHARD_PROGRAM, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_shard_that_hands_back_large_blocks_keeps_less_resident():
    """Without it the arrays that grow with the shard come from the heap once a calibration's
    copies have raised glibc's threshold, and their old copies stay resident as holes."""
    default, handed_back = shard_bytes_per_item("default"), shard_bytes_per_item("hand-back")
    assert handed_back < 0.85 * default, (handed_back, default)


SEARCH_PROGRAM = """
import resource
import numpy as np
from shared.runtime.allocator import hand_back_large_blocks
assert hand_back_large_blocks()
from shared.index.shard_index import ItemRecord, ShardIndex

rng = np.random.default_rng(0)
n, image_dim, text_dim = 3000, 1280, 50
index = ShardIndex(image_dim + text_dim, image_dim=image_dim)
vectors = np.abs(rng.standard_normal((n, image_dim + text_dim), np.float32))
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
ids = [f"syn-{i}" for i in range(n)]
index.upsert(ids, vectors, [ItemRecord(i, metadata={"bucket": j % 100}) for j, i in enumerate(ids)])
wanted = {"bucket": {"$lt": 100}}  # every item: scored exactly from the float16 store
for query in vectors[:3]:
    index.search(query, 10, filter=wanted)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for query in vectors[3:23]:
    index.search(query, 10, filter=wanted)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_shard_that_hands_back_large_blocks_reuses_its_search_buffers():
    """A filtered exact search converts its items' float16 rows to float32 (15 MB for 3,000
    items): in chunks below the mmap threshold, from heap space that stays, not faulted in again
    by each of 20 searches (each would fault some 3,750 pages)."""
    out = subprocess.run([sys.executable, "-c", SEARCH_PROGRAM], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 1000, out.stdout

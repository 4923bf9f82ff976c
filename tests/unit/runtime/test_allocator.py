"""shared.runtime.allocator: with the heap thresholds set, a freed 38 MB tensor (the size of a big
activation at batch 8) is reused, not faulted in again, in the main thread and in a thread
started later, like the encode worker's model thread (each case in a fresh interpreter: the
settings are per process and stay set)."""
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

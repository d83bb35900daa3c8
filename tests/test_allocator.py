"""The allocator tuning every trial applies (robustsweep/allocator.py), measured as page faults."""

import platform
import subprocess
import sys

import pytest

from .conftest import TINY_EVAL

#: Page faults per "step" after a setup of the test's choosing. A step does to memory what a training
#: step does: allocates large blocks, writes them, frees them all. With glibc's own thresholds the
#: freed top of the heap goes back to the OS every time and the next step faults it in again.
SCRIPT = r"""
import ctypes, resource, sys

if sys.argv[1] == "tuned":
    from robustsweep.allocator import keep_freed_memory
    assert keep_freed_memory()
elif sys.argv[1] == "trial":  # the tuning as a user gets it: whatever run_trial does to its process
    from robustsweep.config import load_trial_config
    from robustsweep.trial import run_trial
    run_trial(load_trial_config(None, sys.argv[2:]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 30 * 2**20  # above any block a tiny trial frees (so glibc's moving threshold is below it)

def step():
    blocks = [libc.malloc(size) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)

step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is for glibc")


def _faults_per_step(*args: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_malloc_keeps_freed_blocks_for_the_next_step():
    # 3 x 30 MiB re-faulted per step is 23,040 faults of 4 KiB pages
    assert _faults_per_step("none") > 20000
    assert _faults_per_step("tuned") < 100


@glibc_only
def test_a_trial_tunes_its_process(mnist_root, mlflow_uri):
    tuned = _faults_per_step("trial", f"data_root={mnist_root}", f"mlflow_tracking_uri={mlflow_uri}", "device=cpu",
                             "subset=256", "epochs=1", *TINY_EVAL)
    assert tuned < 100

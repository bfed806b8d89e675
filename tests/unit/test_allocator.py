"""train.keep_freed_memory: glibc keeps a freed large block in the process (for later
allocations to reuse) instead of returning it to the system."""

import platform
import subprocess
import sys

import pytest

from grpokit.config import load_config
from grpokit.training.loop import _keep_freed_memory

PROBE = """
import os, sys, torch
from grpokit.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() is None
page = os.sysconf("SC_PAGE_SIZE")
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
x = torch.empty(256 * 2**20 // 4).fill_(1.0)  # 256 MB: over glibc's largest mmap threshold
held = resident()
del x
print((held - resident()) / 2**20)  # MB given back to the system by the free
"""


def _returned_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc only")
def test_a_freed_block_stays_in_the_process_only_with_the_setting():
    assert _returned_mb("default") > 200  # unmapped on free
    assert _returned_mb("keep") < 16  # kept, resident, for the next allocation


def test_the_setting_is_off_by_default_and_reported_when_on(monkeypatch):
    assert _keep_freed_memory(load_config(None, [])) is None
    monkeypatch.setattr("grpokit.training.loop.keep_freed_memory", lambda: "the C library is not glibc")
    note = _keep_freed_memory(load_config(None, ["train.keep_freed_memory=true"]))
    assert note == "train.keep_freed_memory is not applied: the C library is not glibc"

"""train.keep_freed_memory: glibc keeps freed blocks, so a second allocation of a large size
reuses resident pages instead of faulting in fresh ones."""

import platform
import subprocess
import sys

import pytest

from grpokit.config import load_config
from grpokit.trainer import _keep_freed_memory

PROBE = """
import resource, sys, torch
from grpokit.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() is None
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(64 * 2**20 // 4).fill_(1.0)  # 64 MB: over glibc's largest mmap threshold
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(min(faults[1:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc only")
def test_kept_memory_is_reused_without_page_faults():
    # 64 MB in 4 KB pages is 16384 faults when fresh; reused pages fault not at all.
    fresh = _faults("default")
    if fresh < 1000:
        pytest.skip(f"fresh mappings fault in huge pages here ({fresh} faults for 64 MB)")
    assert _faults("keep") * 10 < fresh


def test_the_setting_is_off_by_default_and_reported_when_on(monkeypatch):
    assert _keep_freed_memory(load_config(None, [])) is None
    monkeypatch.setattr("grpokit.trainer.keep_freed_memory", lambda: "the C library is not glibc")
    note = _keep_freed_memory(load_config(None, ["train.keep_freed_memory=true"]))
    assert note == "train.keep_freed_memory is not applied: the C library is not glibc"

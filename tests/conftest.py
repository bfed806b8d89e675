"""Shared fixtures: a tiny random Llama saved once per session, no downloads."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from grpokit.testing import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """Another tiny random model with the same tokenizer: a teacher for distillation tests."""
    from grpokit.testing import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("teacher") / "model", seed=1)


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny matrices: one intra-op thread avoids thread-pool spinning, most of all on a busy
    machine. Slow tests (the real model) keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

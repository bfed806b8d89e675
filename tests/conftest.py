"""Shared fixtures: a tiny random Llama saved once per session, no downloads."""

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from grpokit.models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")

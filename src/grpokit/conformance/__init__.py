"""GRPO conformance vectors (docs/conformance.md): their format (`vectors`) and their run through
grpokit's own math (`runner`), behind `grpokit conformance`."""

from grpokit.conformance.runner import (
    ATOL,
    RTOL,
    CaseResult,
    add_commands,
    compute,
    loss_knobs,
    max_deviation,
    max_excess,
    run_case,
    run_paths,
)
from grpokit.conformance.vectors import VectorError, load_case, validate_case, vector_files

__all__ = ["ATOL", "RTOL", "CaseResult", "VectorError", "add_commands", "compute", "load_case",
           "loss_knobs", "max_deviation", "max_excess", "run_case", "run_paths",
           "validate_case", "vector_files"]

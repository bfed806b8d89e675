"""Datasets handed over as Python objects (`grpokit.train(data=...)`): a list of dicts or a
`datasets.Dataset`, kept in this process under a name made of its content's hash.

The config names such a dataset `data.path: memory:<hash>`: the run folder's config.yaml stays
plain data, and a resume that passes the same rows again gets the same name, so the frozen
`data.path` accepts it; other rows are another name, which the resume refuses.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from grpokit.errors import DataError

SCHEME = "memory:"
_ROWS: dict[str, list[dict[str, Any]]] = {}


def register_rows(data: Any, what: str = "data") -> str:
    """The `data.path` of `data` (a list of dicts, or anything with `to_list()`, such as a
    `datasets.Dataset`), registered in this process."""
    rows = data.to_list() if hasattr(data, "to_list") else data
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"{what}: expected a non-empty list of dicts or a datasets.Dataset, got "
                        f"{type(data).__name__}")
    text = json.dumps(rows, sort_keys=True, default=str)
    name = SCHEME + hashlib.sha256(text.encode()).hexdigest()[:16]
    _ROWS[name] = [dict(r) for r in rows]
    return name


def is_memory(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def memory_dataset(path: str) -> Any:
    """The `datasets.Dataset` of the rows registered under `path`; a name this process does not
    hold (rows registered by another process) is a DataError saying how to pass them again."""
    from datasets import Dataset

    if path not in _ROWS:
        raise DataError(f"data.path={path} names rows passed to grpokit from Python in another "
                        "process; pass the same rows again (grpokit.train(..., data=rows)) or "
                        "point data.path at a file")
    return Dataset.from_list(_ROWS[path])

"""User datasets: rows from JSONL, JSON, CSV, parquet or a `datasets.save_to_disk` folder.

Files are read with the `datasets` library (`load_dataset("json" | "csv" | "parquet")`), folders
with `load_from_disk`; nothing is ever downloaded. CSV cells are read as strings so that answers
such as "007" or "1.50" arrive exactly as written. Every row is checked: a missing, empty or
non-string prompt, or a malformed chat list, is an error naming the file, row and column.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from grpokit.data.render import prompt_messages
from grpokit.typed_tree import DataError

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _load_folder(path: Path, split: str | None) -> Any:
    import datasets  # here, not at the top: its import takes seconds and built-in tasks skip it

    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise DataError(
            f"{path}: a folder must be written by datasets' save_to_disk "
            "(no dataset_dict.json or state.json in it)"
        )
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.Dataset):
        if split is not None:
            raise DataError(
                f"{path}: holds a single dataset without splits; split={split!r} is not used"
            )
        return loaded
    splits = list(loaded)
    if split is None:
        if "train" not in splits and len(splits) != 1:
            raise DataError(f"{path}: pick a split with split=...; splits: {', '.join(splits)}")
        split = "train" if "train" in splits else splits[0]
    if split not in splits:
        raise DataError(f"{path}: no split {split!r}; splits: {', '.join(splits)}")
    return loaded[split]


def _csv_string_features(path: Path) -> Any:
    """Every column of a CSV file as a string (its header row names them)."""
    import datasets

    with path.open(newline="", encoding="utf-8") as file:
        header = next(csv.reader(file), None)
    if not header:
        raise DataError(f"{path}: a CSV file needs a header row naming its columns")
    return datasets.Features({name: datasets.Value("string") for name in header})


def _load_file(path: Path, split: str | None, cache_dir: str | None) -> Any:
    import datasets

    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; expected one of "
            f"{', '.join(_BUILDERS)} or a datasets.save_to_disk folder"
        )
    extra = {"features": _csv_string_features(path)} if builder == "csv" else {}
    try:
        return datasets.load_dataset(
            builder, data_files=str(path), split=split or "train", cache_dir=cache_dir, **extra
        )
    except Exception as exc:  # the datasets library raises many types; all mean "unreadable"
        raise DataError(f"{path}: could not be read as {builder}: {exc}") from exc


def _destinations(
    names: list[str],
    path: Path,
    prompt_column: str,
    messages_column: str | None,
    columns: dict[str, str],
) -> tuple[str, dict[str, str]]:
    """The column holding the prompt, and the row key each column becomes."""
    present = f"columns present: {', '.join(names)}"
    if (
        messages_column is None
        and prompt_column not in names
        and prompt_column == "prompt"
        and "messages" in names
    ):
        messages_column = "messages"
    source = messages_column or prompt_column
    if source not in names:
        what = "messages_column" if messages_column else "prompt_column"
        raise DataError(
            f"{path}: no column {source!r} ({what}); {present}; "
            "pass prompt_column= or messages_column="
        )
    for name in columns:
        if name not in names:
            raise DataError(f"{path}: columns maps {name!r}, which is not a column; {present}")
    keys = {name: columns.get(name, name) for name in names}
    keys[source] = "messages" if messages_column else "prompt"
    taken: dict[str, str] = {}
    for name, key in keys.items():
        if key in taken:
            raise DataError(
                f"{path}: columns {taken[key]!r} and {name!r} would both become {key!r}; "
                "rename one with columns={...}"
            )
        taken[key] = name
    return source, keys


def _clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Arrow gives every message every key seen in the column; absent ones come back as None.
    return [{k: v for k, v in message.items() if v is not None} for message in messages]


def row_name(path: Path, index: int) -> str:
    """How a user finds row `index` (0-based) in the file: its 1-based line in JSONL and CSV
    (after the header), else its 1-based row number."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return f"line {index + 1}"
    if suffix == ".csv":
        return f"line {index + 2}"
    return f"row {index + 1}"


def load_rows(
    path: str | Path,
    *,
    split: str | None = None,
    prompt_column: str = "prompt",
    messages_column: str | None = None,
    columns: dict[str, str] | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of a user dataset, each with `prompt` (str) or `messages` plus the other columns.

    prompt_column names the column that holds the prompt text (it becomes `prompt`); with
    messages_column, that column holds chat lists instead (it becomes `messages`). When neither
    is given and there is no `prompt` column, a `messages` column is used. columns renames other
    columns, {name in the file: key in the row}, e.g. {"solution": "answer"}. limit keeps the
    first rows. split picks a split of a save_to_disk DatasetDict (default "train", or its only
    split) or a slice of a file ("train[:100]"). cache_dir is where `datasets` keeps its Arrow
    cache (default: the library's own).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    dataset = _load_folder(path, split) if path.is_dir() else _load_file(path, split, cache_dir)
    source, keys = _destinations(
        dataset.column_names, path, prompt_column, messages_column, columns or {}
    )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    rows = []
    for i, raw in enumerate(dataset.to_list()):
        row = {keys[name]: value for name, value in raw.items()}
        prompt_messages(row, None, f"{path}: {row_name(path, i)} (column {source!r})")
        if keys[source] == "messages":
            row["messages"] = _clean_messages(row["messages"])
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: has no rows")
    return rows


def split_rows(
    rows: list[dict[str, Any]], eval_fraction: float, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): round(len(rows) * eval_fraction) rows, at least one when eval_fraction > 0,
    chosen by a seeded draw; both parts keep the original row order."""
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    num_eval = round(len(rows) * eval_fraction)
    if eval_fraction > 0:
        num_eval = max(num_eval, 1)
    if len(rows) - num_eval < 1:
        raise DataError(
            f"split_rows: {len(rows)} rows leave no training rows with "
            f"eval_fraction={eval_fraction}"
        )
    held_out = set(random.Random(seed).sample(range(len(rows)), num_eval))
    train = [row for i, row in enumerate(rows) if i not in held_out]
    return train, [row for i, row in enumerate(rows) if i in held_out]

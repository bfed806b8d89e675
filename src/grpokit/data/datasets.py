"""User datasets: rows from JSONL, JSON, CSV, parquet or a `datasets.save_to_disk` folder.

Files are read with the `datasets` library (`load_dataset("json" | "csv" | "parquet")`), folders
with `load_from_disk`; nothing is ever downloaded. CSV cells are read as strings so that answers
such as "007" or "1.50" arrive exactly as written. Every row is checked: a missing, empty or
non-string prompt, or a malformed chat list, is an error naming the file, row and column.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import random
from pathlib import Path
from typing import Any, Iterator

from grpokit.data.render import prompt_messages
from grpokit.typed_tree import DataError, read_json, read_json_lines, read_text

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _load_folder(path: Path, split: str | None) -> Any:
    import datasets  # here, not at the top: its import takes seconds and built-in tasks skip it

    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise DataError(
            f"{path}: a folder must be written by datasets' save_to_disk "
            "(no dataset_dict.json or state.json in it)"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # JSON, Arrow and OS errors all mean "damaged"
        _damaged_folder(path, exc)
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


def _damaged_folder(path: Path, exc: Exception) -> None:
    """The error of a save_to_disk folder that does not load: the JSON file that does not parse
    (FILE:LINE), else the folder and the library's reason (a truncated Arrow file, say)."""
    for name in sorted(path.glob("**/*.json")):
        read_json(name, DataError)
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    raise DataError(f"{path}: cannot be loaded as a datasets.save_to_disk folder: {reason}"
                    ) from exc


def _csv_string_features(path: Path) -> Any:
    """Every column of a CSV file as a string (its header row names them)."""
    import datasets

    try:
        with path.open(newline="", encoding="utf-8") as file:
            header = next(csv.reader(file), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        _diagnose(path, "csv")  # names the line of undecodable bytes
        raise DataError(f"{path}: the CSV header cannot be read: {exc}") from None
    if not header:
        _diagnose(path, "csv")  # an empty file says so
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
        with _library_log_quiet():
            return datasets.load_dataset(
                builder, data_files=str(path), split=split or "train", cache_dir=cache_dir,
                **extra
            )
    except Exception as exc:  # the datasets library raises many types; all mean "unreadable"
        _diagnose(path, builder)
        reason = str(exc).strip() or type(exc).__name__
        raise DataError(f"{path}: could not be read as {builder}: {reason}") from exc


@contextlib.contextmanager
def _library_log_quiet() -> Iterator[None]:
    """`datasets` logs a failure to read a file, with a traceback, before it raises; the DataError
    raised here names the file and line instead, so its own log is left out."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _diagnose(path: Path, builder: str) -> None:
    """After `datasets` failed on a text file: the errors it reports without a line or with an
    empty message, named by file and line. An empty file, bytes that are not UTF-8, a JSONL
    line or a JSON document that does not parse, a JSONL line that is not an object. (Run only
    on failure: a good file is parsed once, by `datasets`.)"""
    if builder == "parquet":
        return
    text = read_text(path, DataError)
    if not text.strip():
        raise DataError(f"{path}: the file is empty (no rows)")
    if path.suffix.lower() == ".jsonl":
        for number, row in read_json_lines(path, DataError):
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object (one row per line), "
                                f"got {type(row).__name__}")
    elif builder == "json":
        read_json(path, DataError)


def _plain_rows(dataset: Any, path: Path) -> list[dict[str, Any]]:
    """The dataset's rows as Python dicts. Arrow reads bytes that are not UTF-8 without complaint
    and fails only here, without naming the file; the file's line is found and named."""
    try:
        return dataset.to_list()
    except UnicodeDecodeError as exc:
        if path.is_file():
            _diagnose(path, _BUILDERS.get(path.suffix.lower(), ""))
        raise DataError(f"{path}: holds text that is not valid UTF-8 ({exc.reason})") from None


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


class Row(dict):
    """A row that knows where it came from: `where` names it as a user finds it ("FILE: line 7",
    "task 'arithmetic': training row 3"), for errors found after loading, such as a prompt too
    long for the tokenizer. Otherwise a plain dict, and pickled as one, so reward workers and
    JSON see only its keys."""

    def __init__(self, data: dict[str, Any], where: str):
        super().__init__(data)
        self.where = where

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)


def named_rows(rows: list[dict[str, Any]], what: str) -> list[Row]:
    """Rows named "{what} {n}", n 1-based (rows a task built, not read from a file)."""
    return [Row(row, f"{what} {n}") for n, row in enumerate(rows, start=1)]


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
    for i, raw in enumerate(_plain_rows(dataset, path)):
        row = {keys[name]: value for name, value in raw.items()}
        prompt_messages(row, None, f"{path}: {row_name(path, i)} (column {source!r})")
        if keys[source] == "messages":
            row["messages"] = _clean_messages(row["messages"])
        rows.append(Row(row, f"{path}: {row_name(path, i)}"))
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

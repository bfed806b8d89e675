"""User datasets: rows from JSONL, JSON, CSV, parquet, a `datasets.save_to_disk` folder, a folder
laid out as a dataset repository, or a dataset repository by name (`openai/gsm8k`).

Files are read with the `datasets` library (`load_dataset("json" | "csv" | "parquet")`),
save_to_disk folders with `load_from_disk`; a repository (a local folder, or a name that is no
local path) with `load_dataset(path, name=config, split=split)` and the library's cache, so a name
is downloaded once online and read from the cache offline. CSV cells are read as strings so that
answers such as "007" or "1.50" arrive exactly as written. Every row is checked: a missing, empty
or non-string prompt, or a malformed chat list, is an error naming the file, row and column.
Without an `answer` column, a `solution` column's last `\\boxed{...}` becomes the row's `answer`
(MATH-style data; see docs/data.md, "Datasets by name").
"""

from __future__ import annotations

import contextlib
import csv
import logging
import random
import re
from pathlib import Path
from typing import Any, Iterator

from grpokit.data.memory import is_memory, memory_dataset
from grpokit.data.render import prompt_messages
from grpokit.errors import DataError, read_json, read_json_lines, read_text
from grpokit.rewards.extract import boxed_contents

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# A dataset repository's name: `owner/name` or `name`.
_REPOSITORY = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")
_LOCAL_COPY = (
    "pass a local copy instead: data.path=/path/to/train.jsonl (or .parquet, .csv, a "
    "datasets.save_to_disk folder, or a folder laid out as the repository), or load it once "
    "online (or copy a populated datasets cache) and set HF_DATASETS_OFFLINE=1"
)


def is_repository_name(path: str | Path) -> bool:
    """Whether data.path names a dataset repository (`openai/gsm8k`, `gsm8k`): it is no local
    path, has the shape of a name and does not end in a file suffix (a missing `data.jsonl` is
    a missing file)."""
    text = str(path)
    return (not Path(text).exists() and _REPOSITORY.fullmatch(text) is not None
            and Path(text).suffix.lower() not in _BUILDERS)


def _load_repository(source: str, config: str | None, split: str | None,
                     cache_dir: str | None) -> Any:
    """A dataset repository, a local folder or a name, through `load_dataset` and its cache."""
    import datasets

    try:
        with _library_log_quiet():
            return datasets.load_dataset(source, name=config, split=split or "train",
                                         cache_dir=cache_dir)
    except Exception as exc:  # the library raises many types; all mean "cannot be loaded"
        raise _repository_error(source, config, split or "train", exc) from None


def _repository_error(source: str, config: str | None, split: str, exc: Exception) -> DataError:
    """What went wrong, in one line: an unreachable name says how to pass a local copy; a
    configuration or split the dataset lacks lists those it has (the library's words)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    what = f"dataset {source!r} (config {config!r}, split {split!r})"
    if isinstance(exc, ValueError):
        return DataError(f"{what}: {reason}; set data.config and data.split to a configuration "
                         "and split it has")
    if Path(source).exists():
        return DataError(
            f"{what}: cannot be loaded ({reason}); a folder must be written by datasets' "
            "save_to_disk (dataset_dict.json or state.json in it) or hold data files laid out "
            "as a dataset repository (data/train.jsonl, or a README.md with a configs: header)"
        )
    return DataError(
        f"{what}: no local file or folder has this name, and the dataset could not be loaded "
        f"from the Hugging Face Hub or the datasets cache ({reason}); {_LOCAL_COPY}"
    )


def _load_folder(path: Path, split: str | None, config: str | None,
                 cache_dir: str | None) -> Any:
    import datasets  # here, not at the top: its import takes seconds and built-in tasks skip it

    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        return _load_repository(str(path), config, split, cache_dir)
    if config is not None:
        raise DataError(f"{path}: a datasets.save_to_disk folder has no configurations; "
                        f"config={config!r} is not used")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # JSON, Arrow and OS errors all mean "damaged"
        _damaged_folder(path, exc)
    if isinstance(loaded, datasets.Dataset):
        if split not in (None, "train"):  # a single dataset is the training split
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


def _open(path: str | Path, split: str | None, config: str | None, cache_dir: str | None
          ) -> tuple[Any, Path]:
    """The dataset at `path`: a file, a folder, a repository by name, or rows handed over from
    Python (`memory:`, grpokit/data/memory.py)."""
    if is_memory(path):
        return memory_dataset(str(path)), Path(str(path))
    if is_repository_name(path):
        return _load_repository(str(path), config, split, cache_dir), Path(str(path))
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    if path.is_dir():
        return _load_folder(path, split, config, cache_dir), path
    if config is not None:
        raise DataError(f"{path}: a file has no configurations; config={config!r} is not used "
                        "(it names a configuration of a dataset repository)")
    return _load_file(path, split, cache_dir), path


def gold_from_solutions(rows: list[dict[str, Any]]) -> None:
    """MATH-style rows, in place: when no row has an `answer`, each row whose `solution` holds a
    `\\boxed{...}` gets its last box's contents as `answer`, the gold the `math` reward reads
    (GSM8K's `... #### 42` answers need nothing: the reward reads what follows the last ####)."""
    if any("answer" in row for row in rows):
        return
    for row in rows:
        solution = row.get("solution")
        boxes = boxed_contents(solution) if isinstance(solution, str) else []
        if boxes:
            row["answer"] = boxes[-1].strip()


def load_rows(
    path: str | Path,
    *,
    split: str | None = None,
    prompt_column: str = "prompt",
    messages_column: str | None = None,
    columns: dict[str, str] | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
    config: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of a user dataset, each with `prompt` (str) or `messages` plus the other columns.

    prompt_column names the column that holds the prompt text (it becomes `prompt`); with
    messages_column, that column holds chat lists instead (it becomes `messages`). When neither
    is given and there is no `prompt` column, a `messages` column is used. columns renames other
    columns, {name in the file: key in the row}, e.g. {"solution": "answer"}. limit keeps the
    first rows. split picks a split of a save_to_disk DatasetDict (default "train", or its only
    split), of a dataset repository (default "train") or a slice ("train[:100]"). path may name a
    dataset repository (`openai/gsm8k`) or be a folder laid out as one; config picks its
    configuration (`main`). cache_dir is where `datasets` keeps its cache (default: its own).
    Without an `answer` column, a `solution` column's last box becomes `answer`.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    dataset, path = _open(path, split, config, cache_dir)
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
    gold_from_solutions(rows)
    return rows


def dataset_rows(data: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The rows of a config's `data.path` (its `data.config` and `data.split`, column mapping
    applied) and the held-out rows that `data.eval_path` or `data.eval_split` name; None when
    neither is set (the caller holds out `data.eval_fraction`, as split_rows does)."""
    columns = dict(prompt_column=data.prompt_column, messages_column=data.messages_column,
                   columns=data.columns)
    if data.eval_path is not None and data.eval_split is not None:
        raise DataError(f"data.eval_path={data.eval_path!r} and data.eval_split="
                        f"{data.eval_split!r} both name the held-out rows; set one of them")
    rows = load_rows(data.path, config=data.config, split=data.split, **columns)
    if data.eval_path is not None:
        return rows, load_rows(data.eval_path, **columns)
    if data.eval_split is not None:
        return rows, load_rows(data.path, config=data.config, split=data.eval_split, **columns)
    return rows, None


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

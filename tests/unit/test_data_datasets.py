import json
import pickle

import pytest

from grpokit.data.datasets import load_rows, split_rows
from grpokit.errors import DataError

ROWS = [
    {"question": "1+1?", "solution": "2", "level": 1},
    {"question": "2+3?", "solution": "5", "level": 2},
    {"question": "7*6?", "solution": "42", "level": 3},
]
CHATS = [
    {"chat": [{"role": "user", "content": "hi"}], "answer": "a"},
    {
        "chat": [{"role": "system", "content": "s"}, {"role": "user", "content": "yo"}],
        "answer": "b",
    },
]


def write(path, rows):
    """Write rows in the format the file suffix names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        lines = [",".join(rows[0])] + [",".join(str(v) for v in row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        import datasets

        dataset = datasets.Dataset.from_list(rows)
        if path.suffix == ".parquet":
            dataset.to_parquet(str(path))
        else:
            datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(
                str(path)
            )
    return path


@pytest.fixture
def load(tmp_path):
    def load(path, **kwargs):
        return load_rows(path, cache_dir=str(tmp_path / "cache"), **kwargs)

    return load


@pytest.mark.parametrize("name", ["data.jsonl", "data.json", "data.csv", "data.parquet", "saved"])
def test_formats_with_column_mapping(tmp_path, load, name):
    path = write(tmp_path / name, ROWS)
    rows = load(path, prompt_column="question", columns={"solution": "answer"})
    assert [row["prompt"] for row in rows] == ["1+1?", "2+3?", "7*6?"]
    assert [row["answer"] for row in rows] == ["2", "5", "42"]
    # CSV cells stay strings; the other formats keep their types.
    assert rows[2]["level"] == ("3" if name.endswith(".csv") else 3)
    assert set(rows[0]) == {"prompt", "answer", "level"}


def test_save_to_disk_splits(tmp_path, load):
    path = write(tmp_path / "saved", ROWS)
    assert len(load(path, prompt_column="question")) == 3  # "train" by default
    assert len(load(path, prompt_column="question", split="test")) == 1
    with pytest.raises(ValueError, match=r"no split 'dev'; splits: train, test"):
        load(path, prompt_column="question", split="dev")


def test_a_single_saved_dataset_is_the_train_split(tmp_path, load):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert len(load(tmp_path / "one", prompt_column="question", split="train")) == 3
    with pytest.raises(DataError, match="single dataset without splits; split='test'"):
        load(tmp_path / "one", prompt_column="question", split="test")
    with pytest.raises(DataError, match="save_to_disk folder has no configurations"):
        load(tmp_path / "one", prompt_column="question", config="main")


def test_file_split_slice_and_limit(tmp_path, load):
    path = write(tmp_path / "data.jsonl", ROWS)
    assert len(load(path, prompt_column="question", split="train[:2]")) == 2
    assert [r["prompt"] for r in load(path, prompt_column="question", limit=1)] == ["1+1?"]
    assert len(load(path, prompt_column="question", limit=10)) == 3


def test_messages_column(tmp_path, load):
    path = write(tmp_path / "chat.jsonl", CHATS)
    rows = load(path, messages_column="chat")
    assert rows[1]["messages"] == CHATS[1]["chat"] and rows[1]["answer"] == "b"
    assert "prompt" not in rows[0]


def test_messages_column_is_found_by_default(tmp_path, load):
    path = write(
        tmp_path / "chat.jsonl",
        [{"messages": row["chat"], "answer": row["answer"]} for row in CHATS],
    )
    assert load(path)[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_missing_file(tmp_path, load):
    with pytest.raises(DataError, match="dataset not found: .*nope.jsonl"):
        load(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {},
            r"data.jsonl: no column 'prompt' \(prompt_column\); "
            r"columns present: question, solution, level",
        ),
        ({"messages_column": "chat"}, r"no column 'chat' \(messages_column\)"),
        (
            {"prompt_column": "question", "columns": {"answer": "x"}},
            "columns maps 'answer', which is not a column",
        ),
        (
            {"prompt_column": "question", "columns": {"solution": "level"}},
            "would both become 'level'",
        ),
        ({"prompt_column": "question", "limit": 0}, "limit must be a positive integer"),
        ({"prompt_column": "question", "split": "test"}, "could not be read as json"),
    ],
)
def test_bad_columns(tmp_path, load, kwargs, message):
    path = write(tmp_path / "data.jsonl", ROWS)
    with pytest.raises(ValueError, match=message):
        load(path, **kwargs)


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        (
            [{"p": "ok"}, {"p": ""}],
            {},
            r"data.jsonl: line 2 \(column 'p'\): 'prompt' must be a non-empty string",
        ),
        (
            [{"p": "ok"}, {"p": None}],
            {},
            r"line 2 \(column 'p'\): 'prompt' must be a non-empty string, got None",
        ),
        ([{"p": "ok"}, {"p": "   "}], {}, "line 2"),
        (
            [{"p": ["a"]}],
            {},
            r"line 1 \(column 'p'\): 'prompt' must be a non-empty string, got \['a'\]",
        ),
    ],
)
def test_bad_prompt_rows(tmp_path, load, rows, kwargs, message):
    path = write(tmp_path / "data.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        load(path, prompt_column="p", **kwargs)


@pytest.mark.parametrize(
    "chat, message",
    [
        ("hello", "messages must be a non-empty list"),
        ([], "messages must be a non-empty list"),
        ([{"role": "user"}], r"messages\[0\]\['content'\] must be a string"),
        ([{"content": "x"}], r"messages\[0\] must be a dict with a string 'role'"),
    ],
)
def test_bad_messages_rows(tmp_path, load, chat, message):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"chat": [{"role": "user", "content": "ok"}]})
        + "\n"
        + json.dumps({"chat": chat})
        + "\n"
    )
    with pytest.raises(ValueError, match=message):
        load(path, messages_column="chat")


def test_unsupported_and_unreadable(tmp_path, load):
    (tmp_path / "data.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"data.txt: unsupported file type '.txt'"):
        load(tmp_path / "data.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="must be written by datasets' save_to_disk"):
        load(tmp_path / "folder")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON: .* at column 2"):
        load(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("name, text", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.json", ""), ("empty.csv", ""),
])
def test_an_empty_file_says_so(tmp_path, load, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=f"{name}: the file is empty"):
        load(tmp_path / name)


@pytest.mark.parametrize("name, content, message", [
    ("rows.jsonl", b'{"prompt": "a"}\n\n{"prompt": "b",}\n',
     r"rows.jsonl:3: not valid JSON: Expecting property name .* at column 16"),
    ("rows.jsonl", b'{"prompt": "a"}\n["b"]\n', r"rows.jsonl:2: expected a JSON object"),
    ("rows.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n',
     r"rows.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 16\)"),
    ("rows.json", b'[{"prompt": "a"},\n {"prompt": }]', r"rows.json:2: not valid JSON"),
    ("rows.csv", b"prompt,answer\na,1\ncaf\xe9,2\n", r"rows.csv:3: not valid UTF-8"),
])
def test_a_broken_file_names_its_line(tmp_path, load, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load(tmp_path / name)


def test_a_damaged_save_to_disk_folder_names_the_file(tmp_path, load):
    path = write(tmp_path / "saved", ROWS)
    (path / "train" / "state.json").write_text('{"_data_files": [\n')
    with pytest.raises(DataError, match=r"saved/train/state.json:2: not valid JSON"):
        load(path, prompt_column="question")
    path = write(tmp_path / "saved2", ROWS)
    arrow = next((path / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(DataError, match=r"saved2: cannot be loaded as a datasets.save_to_disk"):
        load(path, prompt_column="question")


def test_rows_know_their_file_and_line(tmp_path, load):
    path = write(tmp_path / "data.jsonl", ROWS)
    rows = load(path, prompt_column="question")
    assert [row.where for row in rows] == [f"{path}: line {n}" for n in (1, 2, 3)]
    # Otherwise plain dicts: equal to one, and pickled and copied as one.
    assert rows[0] == {"prompt": "1+1?", "solution": "2", "level": 1}
    assert type(pickle.loads(pickle.dumps(rows[0]))) is dict


@pytest.mark.parametrize(
    "n, fraction, num_eval",
    [(10, 0.2, 2), (10, 0.0, 0), (10, 0.01, 1), (3, 0.5, 2), (7, 0.5, 4), (2, 0.1, 1)],
)
def test_split_rows_sizes(n, fraction, num_eval):
    rows = [{"prompt": str(i)} for i in range(n)]
    train, held_out = split_rows(rows, fraction, seed=1)
    assert len(held_out) == num_eval and len(train) == n - num_eval
    assert sorted(train + held_out, key=lambda r: int(r["prompt"])) == rows
    # Both parts keep the original order.
    assert train == sorted(train, key=lambda r: int(r["prompt"]))


def test_split_rows_is_seeded():
    rows = [{"prompt": str(i)} for i in range(50)]
    assert split_rows(rows, 0.2, seed=3) == split_rows(rows, 0.2, seed=3)
    assert split_rows(rows, 0.2, seed=3)[1] != split_rows(rows, 0.2, seed=4)[1]


@pytest.mark.parametrize("n, fraction", [(1, 0.5), (10, 1.0), (10, -0.1)])
def test_split_rows_bad(n, fraction):
    with pytest.raises(ValueError):
        split_rows([{"prompt": "x"}] * n, fraction)


def test_csv_cells_arrive_as_written(tmp_path, load):
    path = tmp_path / "data.csv"
    path.write_text('prompt,answer\n"What is 3+4, then +0?",007\nq2,1.50\n,3\n')
    with pytest.raises(
        ValueError,
        match=r"data.csv: line 4 \(column 'prompt'\): 'prompt' must be a non-empty string, got None",
    ):
        load(path)
    rows = load(path, limit=2)
    assert rows == [
        {"prompt": "What is 3+4, then +0?", "answer": "007"},
        {"prompt": "q2", "answer": "1.50"},
    ]

"""A user's broken file never gives a traceback (docs/runs.md, Errors): every command, over
broken configs, datasets, model folders, run folders and inputs, exits 2 with one message naming
the file, and the line where there is one."""

import json
import shutil

import pytest

from grpokit.cli import main

QUICK = ["train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
         "rollout.max_new_tokens=24", "eval.num_prompts=2", "log.report_to=[]",
         "eval.before_and_after=false"]
ROWS = [{"prompt": "1+1=", "answer": "2", "chosen": "2", "rejected": "3", "completion": "2"}]


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.fixture(scope="module")
def broken(tiny_model_dir, tmp_path_factory):
    """Broken files, each named by what is wrong with it."""
    root = tmp_path_factory.mktemp("broken")
    good_row = json.dumps(ROWS[0])
    files = {
        "yaml": _write(root / "bad.yaml", "train:\n  steps: 3\n lr: [\n"),
        "utf8_yaml": _write(root / "latin1.yaml", b"train:\n  steps: 3 # \xe9t\xe9\n"),
        "rewards": _write(root / "rewards.yaml", "rewards:\n  - {name: math}\n"),
        "empty": _write(root / "empty.jsonl", ""),
        "bad_line": _write(root / "bad_line.jsonl", f"{good_row}\n{good_row}\n{{\"prompt\": \n"),
        "utf8_data": _write(root / "latin1.jsonl", f"{good_row}\n".encode() + b'{"prompt": "\xe9"}\n'),
        "bad_json": _write(root / "bad.json", '[\n  {"prompt": "a"},\n  {"prompt": \n'),
    }
    for name, damage in (
            ("config", lambda d: (d / "config.json").write_text('{"model_type": "llama",')),
            ("weights", lambda d: (d / "model.safetensors").write_bytes(
                (d / "model.safetensors").read_bytes()[:4096])),
            ("tokenizer", lambda d: (d / "tokenizer.json").write_text('{"version": "1.0",\n'))):
        files[f"model_{name}"] = folder = root / f"model_{name}"
        shutil.copytree(tiny_model_dir, folder)
        damage(folder)
    files["checkpoint"] = root / "step-000003"
    shutil.copytree(tiny_model_dir, files["checkpoint"] / "model")
    return files


def _run_folder(root, **damaged):
    """A run folder of one logged step, with `damaged` files written over the good ones."""
    good = {"metrics.jsonl": '{"step": 1, "time": 1.0, "reward/mean": 0.5}\n',
            "config.yaml": "train:\n  steps: 1\n", "run.json": '{"starts": []}',
            "samples.jsonl": '{"step": 1, "completion": "2", "row": {"prompt": "1+1="}}\n',
            "eval.json": '{"before": {"pass@1": 0.5}}'}
    for name, text in {**good, **damaged}.items():
        _write(root / name, text)
    return root


def _exits_2_naming(capsys, argv, *named):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in named:
        assert str(text) in err, err
    return err


@pytest.mark.parametrize("command", ["train", "sft", "dpo", "ppo", "eval"])
def test_invalid_yaml_in_a_config(broken, capsys, command):
    err = _exits_2_naming(capsys, [command, "-c", str(broken["yaml"])], f"{broken['yaml']}:3: ")
    assert "not valid YAML" in err and "<unicode string>" not in err
    _exits_2_naming(capsys, [command, "-c", str(broken["utf8_yaml"])],
                    f"{broken['utf8_yaml']}:2: not valid UTF-8")


def test_invalid_yaml_in_a_resumed_runs_config(broken, tmp_path, capsys):
    run = _run_folder(tmp_path / "run", **{"config.yaml": "train: {steps: 1\n"})
    _exits_2_naming(capsys, ["train", "--resume", str(run)], f"{run / 'config.yaml'}:2: ")


def test_score_names_the_broken_config_and_input(broken, tmp_path, capsys):
    good = _write(tmp_path / "in.jsonl", '{"completion": "2", "answer": "2"}\n')
    _exits_2_naming(capsys, ["score", "-c", str(broken["yaml"]), "--input", str(good)],
                    f"{broken['yaml']}:3: not valid YAML")
    latin1 = _write(tmp_path / "latin1.jsonl", b'{"completion": "2"}\n{"completion": "\xe9"}\n')
    _exits_2_naming(capsys, ["score", "-c", str(broken["rewards"]), "--input", str(latin1)],
                    f"{latin1}:2: not valid UTF-8")


@pytest.mark.parametrize("command", ["train", "sft", "dpo", "ppo", "eval"])
@pytest.mark.parametrize("case, line", [("empty", None), ("bad_line", 3), ("utf8_data", 2),
                                        ("bad_json", 4)])
def test_a_broken_dataset(broken, tiny_model_dir, tmp_path, capsys, command, case, line):
    path = broken[case]
    where = f"{path}:{line}: " if line else f"{path}: the file is empty"
    _exits_2_naming(capsys, [command, f"model.path={tiny_model_dir}", "data.task=null",
                             f"data.path={path}", f"log.output_dir={tmp_path / 'out'}", *QUICK],
                    where)


@pytest.mark.parametrize("command", ["train", "sft", "dpo", "ppo", "eval"])
@pytest.mark.parametrize("case, named", [
    ("model_config", "config.json:1: not valid JSON"),
    ("model_weights", "model.safetensors: "),
    ("model_tokenizer", "tokenizer.json:2: not valid JSON"),
])
def test_a_broken_model_folder(broken, tmp_path, capsys, command, case, named):
    _exits_2_naming(capsys, [command, f"model.path={broken[case]}",
                             f"log.output_dir={tmp_path / 'out'}", *QUICK],
                    f"{broken[case]}/{named}")


def test_a_checkpoint_folder_as_the_model_points_at_its_model(broken, capsys):
    _exits_2_naming(capsys, ["eval", f"model.path={broken['checkpoint']}"],
                    f"pass model.path={broken['checkpoint'] / 'model'}")


@pytest.mark.parametrize("damaged, named", [
    ({"run.json": '{"starts": [{"machine": '}, "run.json:1: not valid JSON"),
    ({"run.json": '{"starts": "today"}'}, "run.json: `starts` must be a list"),
    ({"config.yaml": "train: [1,\n"}, "config.yaml:2: not valid YAML"),
    ({"config.yaml": "- a list\n"}, "config.yaml: expected a mapping"),
    ({"metrics.jsonl": '{"step": 1}\n{"step": "two"}\n'}, "metrics.jsonl:2: expected a JSON "
                                                          "object with a whole, non-negative"),
    ({"metrics.jsonl": '{"step": 1}\n{"loss": 1.0}\n'}, "metrics.jsonl:2: "),
    ({"metrics.jsonl": '{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n'}, "metrics.jsonl:2: "),
    ({"samples.jsonl": '{"completion": "2"}\n'}, "samples.jsonl:1: "),
    ({"eval.json": '{"before": {"pass@1": '}, "eval.json:1: not valid JSON"),
    ({"eval.json": "[]"}, "eval.json: expected a mapping"),
    ({"metrics.jsonl": b'{"step": 1, "x": "\xff"}\n'}, "metrics.jsonl:1: not valid UTF-8"),
])
def test_report_names_the_broken_file_of_a_run(tmp_path, capsys, damaged, named):
    run = _run_folder(tmp_path / "run", **damaged)
    _exits_2_naming(capsys, ["report", str(run)], f"{run}/{named}")


def test_report_names_a_broken_eval_file(tmp_path, capsys):
    path = _write(tmp_path / "eval.jsonl", '{"kind": "prompt", "index": 0}\n{"kind": "summ\n')
    _exits_2_naming(capsys, ["report", str(path)], f"{path}:2: not valid JSON")
    _write(path, '{"kind": "summary", "summary": 0.5}\n')
    _exits_2_naming(capsys, ["report", str(path)], f"{path}: the summary record")


@pytest.mark.parametrize("content", [
    '{"name": "x",\n',
    b'{"name": "caf\xe9"}',
])
def test_conformance_names_a_broken_vector_file(tmp_path, capsys, content):
    path = _write(tmp_path / "vector.json", content)
    assert main(["conformance", str(path)]) == 2
    out = capsys.readouterr()
    assert str(path) in out.out + out.err and "Traceback" not in out.out + out.err


def test_the_message_is_one_line(broken, capsys):
    assert main(["train", "-c", str(broken["yaml"])]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"grpokit: config error: {broken['yaml']}:3: not valid YAML: expected <block end>, but "
        "found '<block mapping start>' at column 2 (while parsing a block mapping)"]

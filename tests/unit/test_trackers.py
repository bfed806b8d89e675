"""The trackers of log.report_to with the real libraries, offline: wandb in offline mode, mlflow in
a local store; what they were sent is read back from what they wrote."""

import json
import shutil
import struct
import sys

import pytest

from grpokit.config import ConfigError, load_config
from grpokit.errors import UserError
from grpokit.training.sinks import make_sinks

RECORDS = [
    {"step": 2, "index": 0, "row": {"prompt": "1+1=", "answer": "2"}, "completion": "2 | two\n",
     "finish_reason": "stop", "rewards": {"math": 1.0}, "reward": 1.0, "advantage": 0.5},
    {"step": 2, "index": 4, "row": {"prompt": "2+2=", "answer": "4"}, "completion": "5",
     "finish_reason": "length", "rewards": {"math": None}, "reward": None, "advantage": -0.5},
]
STEPS = [(1, {"loss/kl": 0.25, "reward/mean": float("inf"), "optim/lr": 1e-3}),
         (2, {"loss/kl": 0.5, "reward/mean": 1.0, "optim/lr": 1e-3})]


def _cfg(out, *extra):
    return load_config(overrides=[f"log.output_dir={out}", *extra])


def _log_steps(sinks, steps=STEPS, samples_at=2):
    for step, metrics in steps:
        sinks.log(step, metrics)
        if step == samples_at:
            sinks.log_samples(step, RECORDS)
    sinks.close()


@pytest.mark.parametrize("names, message", [
    ("[tensorboard, comet]", "log.report_to: invalid value 'comet'"),
    ("tensorboard", "log.report_to: expected a list, got 'tensorboard'"),
])
def test_report_to_accepts_the_known_trackers_only(names, message):
    with pytest.raises(ConfigError, match=f"{message}; valid values: 'tensorboard', 'wandb', "
                                          "'mlflow'$"):
        load_config(overrides=[f"log.report_to={names}"])
    assert load_config(overrides=["log.report_to=[]"]).log.report_to == []
    assert load_config().log.report_to == ["tensorboard"]
    assert load_config().log.report_to is not load_config().log.report_to  # a list per config


def test_every_tracker_name_has_a_sink_built_once(tmp_path):
    from dataclasses import fields

    from grpokit.config import LogConfig
    from grpokit.training.sinks import _TRACKER_SINKS

    (report_to,) = [f for f in fields(LogConfig) if f.name == "report_to"]
    assert set(_TRACKER_SINKS) == set(report_to.metadata["choices"])
    sinks = make_sinks(_cfg(tmp_path, "log.report_to=[tensorboard, tensorboard]"), tmp_path, None)
    assert [type(s).__name__ for s in sinks.sinks] == ["JsonlSink", "TensorBoardSink"]
    sinks.close()


def test_the_removed_tensorboard_key_names_its_replacement():
    with pytest.raises(ConfigError, match=r"log.tensorboard was replaced by log.report_to: "
                                          r"\[tensorboard\] \(was true\) or \[\] \(was false\)"):
        load_config(overrides=["log.tensorboard=false"])


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_missing_library_names_the_extra_to_install(tracker, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import tracker` raises ImportError
    with pytest.raises(UserError, match=rf"pip install 'grpokit\[{tracker}\]'"):
        make_sinks(_cfg(tmp_path, f"log.report_to=[{tracker}]"), tmp_path, None)


@pytest.mark.parametrize("command", ["train", "sft", "dpo"])
def test_a_missing_library_stops_the_start_before_anything_is_written(command, tiny_model_dir,
                                                                     tmp_path, monkeypatch, capsys):
    from grpokit.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    code = main([command, f"model.path={tiny_model_dir}", f"log.output_dir={out}",
                 "log.report_to=[tensorboard, wandb]", "train.steps=1", "eval.num_prompts=2",
                 "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=24",
                 "data.max_prompt_length=256", "rollout.engine=generate",
                 "data.task_args={digits: 1, ops: '+', train_size: 4, eval_size: 2, style: short}"])
    assert code == 2
    assert "log.report_to names wandb" in capsys.readouterr().err
    assert not out.exists()  # no config.yaml, run.json, metrics.jsonl or evaluation


def test_a_library_that_fails_to_import_is_named(tmp_path, monkeypatch):
    import importlib

    from grpokit.training.sinks import check_trackers

    real = importlib.import_module

    def broken(name, *args):
        if name == "mlflow":
            raise AttributeError("module 'google.protobuf' has no attribute 'x'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(UserError, match=r"mlflow fails to import \(AttributeError: module "):
        check_trackers(_cfg(tmp_path, "log.report_to=[mlflow]"))
    check_trackers(_cfg(tmp_path, "log.report_to=[tensorboard]"))  # imports nothing


def test_tensorboard_gets_the_samples_as_a_markdown_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_steps(make_sinks(_cfg(tmp_path), tmp_path, None))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    (text,) = events.Tensors("samples/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert text.step == 2 and table.startswith("| step | index | row | completion |")
    assert "| 2 \\| two<br> |" in table and "None" in table.splitlines()[3]


# ---------------------------------------------------------------- wandb


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_CONFIG_DIR": "home/config", "WANDB_CACHE_DIR": "home/cache",
                       "WANDB_DATA_DIR": "home/data"}.items():
        monkeypatch.setenv(key, str(tmp_path / value) if value.startswith("home/") else value)
    monkeypatch.setenv("WANDB_PROJECT", "tests")


def _wandb_records(path):
    """The protobuf records of a run's .wandb file: LevelDB's log format (32 KiB blocks of
    chunks with a 7-byte header: CRC, length, FULL/FIRST/MIDDLE/LAST) after a 7-byte W&B header;
    the file `wandb sync` uploads."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, chunks = path.read_bytes(), 7, b""
    assert data.startswith(b":W&B")
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _wandb_run(folder):
    """(run record, config, {step: {key: value}}) of an offline run folder."""
    (path,) = folder.glob("run-*.wandb")
    run, config, history = None, {}, {}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history[record.history.step.num] = {"/".join(i.nested_key) or i.key: json.loads(
                i.value_json) for i in record.history.item}
    return run, config, history


def test_wandb_offline_gets_metrics_config_and_a_samples_table(tmp_path, wandb_offline):
    _log_steps(make_sinks(_cfg(tmp_path, "log.report_to=[wandb]"), tmp_path, None))
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    run, config, history = _wandb_run(folder)
    run_id = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    assert (run.run_id, run.project, run.display_name) == (run_id, "tests", tmp_path.name)
    assert config["train"]["lr"] == 1e-5 and config["log"]["report_to"] == ["wandb"]
    assert sorted(history) == [1, 2]
    assert history[1]["loss/kl"] == 0.25 and "reward/mean" not in history[1]  # inf is left out
    assert (history[2]["loss/kl"], history[2]["reward/mean"]) == (0.5, 1.0)
    table = json.loads((folder / "files" / history[2]["samples/path"]).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["completion"] for r in rows] == ["2 | two\n", "5"]
    assert json.loads(rows[0]["row"]) == RECORDS[0]["row"] and rows[1]["reward"] is None


def test_a_resumed_run_continues_its_wandb_run(tmp_path, wandb_offline):
    _log_steps(make_sinks(_cfg(tmp_path, "log.report_to=[wandb]"), tmp_path, None))
    first = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    _log_steps(make_sinks(_cfg(tmp_path, "log.report_to=[wandb]", "train.steps=20"), tmp_path,
                          None, start_step=2), [(3, {"loss/kl": 0.75})])
    runs = [_wandb_run(f) for f in (tmp_path / "wandb").glob("offline-run-*")]  # one per start
    assert len(runs) == 2 and {run.run_id for run, _, _ in runs} == {first}
    (_, config, history), = [r for r in runs if 3 in r[2]]
    assert sorted(history) == [3] and config["train"]["steps"] == 20


# ---------------------------------------------------------------- mlflow


@pytest.fixture(scope="session")
def mlflow_empty_store(tmp_path_factory):
    """An empty local store, made once: creating one runs MLflow's schema migrations (seconds)."""
    mlflow = pytest.importorskip("mlflow")
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_local(mlflow_empty_store, monkeypatch):
    """Puts a copy of the empty store where a run in `folder` finds its local store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")

    def seed(folder):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(mlflow_empty_store, folder / "mlflow.db")
    return seed


def _mlflow_run(out):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    return client, json.loads((out / "trackers.json").read_text())["mlflow"]


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_mlflow_gets_metrics_params_and_sample_tables_in_the_run_folder(tmp_path, mlflow_local):
    mlflow_local(tmp_path)
    _log_steps(make_sinks(_cfg(tmp_path, "log.report_to=[mlflow]"), tmp_path, None))
    client, run_id = _mlflow_run(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    assert _history(client, run_id, "loss/kl") == [(1, 0.25), (2, 0.5)]
    assert _history(client, run_id, "reward/mean") == [(2, 1.0)]  # inf is left out
    params = run.data.params
    assert params["train.lr"] == "1e-05" and params["log.report_to"] == "['mlflow']"
    assert params["algo.preset"] == "grpo" and params["data.task_args"] == "{}"
    path = client.download_artifacts(run_id, "samples/step_000002.json", str(tmp_path / "got"))
    assert path.startswith(str(tmp_path / "got")) and (tmp_path / "mlflow-artifacts").is_dir()
    table = json.loads(open(path).read())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["completion"] for r in rows] == ["2 | two\n", "5"]
    assert json.loads(rows[0]["rewards"]) == {"math": 1.0} and rows[1]["reward"] is None
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "samples"}


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, mlflow_local):
    mlflow_local(tmp_path)
    _log_steps(make_sinks(_cfg(tmp_path, "log.report_to=[mlflow]"), tmp_path, None))
    client, run_id = _mlflow_run(tmp_path)
    resumed = make_sinks(_cfg(tmp_path, "log.report_to=[mlflow]", "train.steps=20"), tmp_path,
                         None, start_step=2)
    _log_steps(resumed, [(3, {"loss/kl": 0.75})])
    assert _mlflow_run(tmp_path)[1] == run_id
    assert _history(client, run_id, "loss/kl") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    run = client.get_run(run_id)
    assert run.data.params["train.steps"] == "12"  # parameters cannot change: tags say how
    assert run.data.tags["resumed_at_step_2.train.steps"] == "20"
    make_sinks(_cfg(tmp_path, "log.report_to=[mlflow]"), tmp_path, None).close()  # started over
    assert _mlflow_run(tmp_path)[1] != run_id


def test_a_tiny_training_run_reports_to_tensorboard_and_mlflow(tiny_model_dir, tmp_path,
                                                               mlflow_local):
    from grpokit.stages.grpo import train

    out = tmp_path / "run"
    mlflow_local(out)
    train(load_config(overrides=[
        f"model.path={tiny_model_dir}", f"log.output_dir={out}", "log.report_to=[tensorboard,mlflow]",
        "train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=6", "eval.num_prompts=0", "data.max_prompt_length=1024",
        "log.samples_every=1", "log.num_samples=2", "checkpoint.keep_last=1",
        "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"]))
    client, run_id = _mlflow_run(out)
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in _history(client, run_id, "reward/mean")] == [1, 2]
    assert _history(client, run_id, "optim/lr") == [(r["step"], r["optim/lr"]) for r in jsonl]
    samples = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert samples == {"samples/step_000001.json", "samples/step_000002.json"}
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

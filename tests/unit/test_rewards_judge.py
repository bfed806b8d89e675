import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grpokit.rewards.base import RewardFailure, RewardSpec, Sample
from grpokit.rewards.judge import Judge
from grpokit.rewards.runner import RewardError, RewardRunner


class Stub(BaseHTTPRequestHandler):
    """Answers according to the completion text embedded in the prompt."""

    state = {"calls": 0, "in_flight": 0, "max_in_flight": 0, "failed_once": False, "auth": None}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        with self.lock:
            self.state["calls"] += 1
            self.state["in_flight"] += 1
            self.state["max_in_flight"] = max(self.state["max_in_flight"], self.state["in_flight"])
            self.state["auth"] = self.headers.get("Authorization")
        try:
            self._answer(text)
        finally:
            with self.lock:
                self.state["in_flight"] -= 1

    def _answer(self, text):
        if "FLAKY" in text and not self.state["failed_once"]:
            self.state["failed_once"] = True
            return self._send(500, b"oops")
        if "SLOW" in text:
            time.sleep(1.0)
        if "BUSY" in text:
            time.sleep(0.1)
        if "BADREQ" in text:
            return self._send(400, b"bad")
        if "DOWN" in text:
            return self._send(500, b"internal error")
        reply = "I cannot tell." if "GARBAGE" in text else f"Reasoning...\nScore: 7\n[{text}]"
        payload = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        self._send(200, json.dumps(payload).encode())

    def _send(self, code, data):
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def judge(url, **kwargs):
    args = {"base_url": url, "model": "stub", "timeout": 5.0, "max_retries": 0, "backoff": 0.01}
    return Judge(**{**args, **kwargs})


@pytest.mark.parametrize(
    "completion, kwargs, expected",
    [
        ("fine", {}, 0.7),
        ("fine", {"min_score": 5, "max_score": 9}, 0.5),
        ("fine", {"max_score": 5}, 1.0),
        ("GARBAGE", {}, "no score in the reply"),
        ("BADREQ", {"max_retries": 3}, "without retry: HTTP Error 400"),
        ("SLOW", {"timeout": 0.3}, "after 1 attempts"),
        ("FLAKY", {"max_retries": 2}, 0.7),
        ("", {}, 0.7),
    ],
)
def test_judge_table(url, completion, kwargs, expected):
    (value,) = judge(url, **kwargs)([Sample(completion, {"prompt": "q", "answer": "a"})])
    if isinstance(expected, str):  # an outage or an unusable reply is an error, never None
        assert isinstance(value, RewardFailure) and expected in value.message
    else:
        assert value == expected


def test_retry_exhausted_is_an_error(url):
    Stub.state["failed_once"] = False
    (value,) = judge(url, max_retries=0)([Sample("FLAKY", {})])
    assert isinstance(value, RewardFailure) and "HTTP 500 after 1 attempts" in value.message


def test_a_judge_answering_500_stops_the_run_naming_it_and_its_last_error(url):
    fn = judge(url, max_retries=1)
    runner = RewardRunner([RewardSpec("judge")], functions=[fn], max_error_rate=0.1)
    samples = [Sample(f"DOWN {i}", {"id": i}) for i in range(5)]
    with pytest.raises(RewardError) as caught:
        runner.score(samples)
    message = str(caught.value)
    assert "reward 'judge' failed on 5 of 5 samples" in message
    assert "max_error_rate=0.1" in message
    assert f"last error: sample 4 (row id=4): judge {url}/chat/completions: HTTP 500 after 2 attempts" in message


def test_concurrency_limit(url):
    deadline = time.monotonic() + 30  # waits only until drained (slow on a loaded machine)
    while Stub.state["in_flight"] and time.monotonic() < deadline:  # a timed-out SLOW request
        time.sleep(0.05)
    Stub.state["max_in_flight"] = 0
    out = judge(url, concurrency=2)([Sample("BUSY", {}) for _ in range(6)])
    assert out == [0.7] * 6
    assert Stub.state["max_in_flight"] == 2


def test_rubric_is_filled_once_and_key_sent(url, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret")
    fn = judge(url, rubric="Q={prompt} A={answer} C={completion}", api_key_env="JUDGE_KEY")
    assert fn.render(Sample("{answer}", {"prompt": "p", "answer": "42"})) == "Q=p A=42 C={answer}"
    fn([Sample("x", {})])
    assert Stub.state["auth"] == "Bearer secret"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_score": 5, "max_score": 5}, "max_score"),
        ({"score_pattern": "Score"}, "capture group"),
        ({"api_key_env": "GRPOKIT_SURELY_UNSET"}, "GRPOKIT_SURELY_UNSET"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_bad_args(kwargs, message):
    with pytest.raises(ValueError, match=message):
        judge("http://127.0.0.1:9", **kwargs)


def test_a_training_run_against_a_judge_that_is_down_stops_with_a_clear_message(url, tiny_model_dir,
                                                                               tmp_path, capsys):
    from grpokit.cli import main

    rewards = f"rewards=[{{name: judge, args: {{base_url: '{url}', model: stub, max_retries: 0, rubric: 'DOWN {{completion}}'}}}}]"
    status = main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={tmp_path / 'run'}", rewards,
                   "train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
                   "rollout.max_new_tokens=4", "eval.before_and_after=false", "reward_runner.max_error_rate=0.1",
                   "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 4, style: short}"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "reward 'judge' failed on 4 of 4 samples" in err
    assert "last error: sample 3" in err and "HTTP 500 after 1 attempts" in err

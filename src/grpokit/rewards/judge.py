"""`judge`: LLM-as-judge through an OpenAI-compatible chat completions endpoint.

The rubric is filled in one pass ({prompt}, {completion}, {answer}; a completion that contains
"{answer}" is not expanded), POSTed to {base_url}/chat/completions at temperature 0, and the last
match of `score_pattern` in the reply is the raw score s. The reward is
(s - min_score) / (max_score - min_score), clipped to [0, 1]. A reply without a score, a 4xx
answer, or a request that still fails after `max_retries` retries (5xx, 429, network errors,
timeouts; exponential backoff with jitter) is a RewardFailure, not None: the runner counts it as
an error of the judge, so a judge that is down stops the run instead of training on nothing. At
most `concurrency` requests are in flight.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from grpokit.rewards.base import RewardFailure, RewardValue, Sample
from grpokit.rewards.registry import register

logger = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "You are grading an answer to a question.\n\nQuestion:\n{prompt}\n\nReference answer:\n"
    "{answer}\n\nAnswer to grade:\n{completion}\n\nRate the answer from 0 (wrong) to 10 (fully "
    "correct and well argued). End your reply with a line 'Score: <number>'."
)
_FIELDS = re.compile(r"\{(prompt|completion|answer)\}")


class _Retryable(Exception):
    pass


class Judge:
    """The `judge` reward function (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        rubric: str = DEFAULT_RUBRIC,
        score_pattern: str = r"Score:\s*(-?\d+(?:\.\d+)?)",
        min_score: float = 0.0,
        max_score: float = 10.0,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        api_key_env: str | None = None,
    ):
        if max_score <= min_score:
            raise ValueError(f"judge: max_score ({max_score}) must exceed min_score ({min_score})")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("judge: need concurrency >= 1, max_retries >= 0 and timeout > 0")
        self.pattern = re.compile(score_pattern)
        if self.pattern.groups < 1:
            raise ValueError(f"judge: score_pattern needs a capture group for the number: {score_pattern!r}")
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ValueError(f"judge: environment variable {api_key_env!r} (api_key_env) is not set")
        self.name = "judge"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.rubric = model, rubric
        self.min_score, self.max_score = float(min_score), float(max_score)
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.concurrency = concurrency

    def render(self, sample: Sample) -> str:
        """The rubric with the sample's fields substituted in a single pass."""
        prompt = sample.row.get("prompt")
        values = {
            "prompt": prompt if isinstance(prompt, str) else sample.prompt,
            "completion": sample.completion,
            "answer": str(sample.row.get("answer", "")),
        }
        return _FIELDS.sub(lambda m: values[m.group(1)], self.rubric)

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        if not samples:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(samples))) as pool:
            return list(pool.map(self.score_one, samples))

    def score_one(self, sample: Sample) -> float | RewardFailure:
        reply = self._ask(self.render(sample))
        if isinstance(reply, RewardFailure):
            return reply
        matches = self.pattern.findall(reply)
        if not matches:
            return self._failure(f"no score in the reply {reply[:200]!r}")
        last = matches[-1] if isinstance(matches[-1], str) else matches[-1][0]
        try:
            raw = float(last)
        except ValueError:
            return self._failure(f"the score {last!r} is not a number")
        scaled = (raw - self.min_score) / (self.max_score - self.min_score)
        return min(1.0, max(0.0, scaled))

    def _failure(self, what: str) -> RewardFailure:
        logger.warning("judge %s: %s", self.url, what)
        return RewardFailure(f"judge {self.url}: {what}")

    def _ask(self, content: str) -> str | RewardFailure:
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0}
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body)
            except _Retryable as exc:
                if attempt == self.max_retries:
                    return self._failure(f"{exc} after {attempt + 1} attempts")
                time.sleep(self.backoff * 2**attempt * (0.5 + random.random()))
            except (urllib.error.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
                return self._failure(f"request failed without retry: {exc}")
        return self._failure("no attempt was made")

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}") from exc
            raise
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise _Retryable(repr(exc)) from exc
        content = reply["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"judge: reply content is {type(content).__name__}, expected text")
        return content


@register("judge")
def build_judge(**args) -> Judge:
    """Factory for `judge` (args base_url, model, rubric, score_pattern, min_score, max_score,
    timeout, max_retries, backoff, concurrency, api_key_env)."""
    return Judge(**args)

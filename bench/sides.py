"""The two sides of the TRL benchmarks: the same prompts, reward, model and knobs, run once by
TRL's GRPOTrainer and once by `grpokit train`, each in its own process so that its peak RSS is its
own (measured by the parent with os.wait4).

    python bench/sides.py trl|grpokit SPEC.json OUT.json    # one side (bench/compare_trl.py and
                                                            # bench/learn_vs_trl.py call this)

SPEC holds the run's knobs (see `Spec`); OUT receives per-step times and rewards. TRL is the
optional `bench` extra (`pip install -e .[bench]`), never a runtime dependency of grpokit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Spec:
    """One benchmark run, the same for both sides."""

    task: str = "add2"
    """"add2": two-digit additions, answer in \\boxed{} (math reward); "add20": sums of two
    numbers from 1 to 20 with a last-number reward."""
    num_rows: int = 512
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    beta: float = 0.04
    lr: float = 1e-6
    steps: int = 4
    bf16: bool = False
    seed: int = 0
    extra: list[str] = field(default_factory=list)
    """Additional `grpokit train` overrides (the grpokit side only)."""


def rows(spec: Spec) -> list[dict[str, str]]:
    """The prompts, with the answer the reward checks."""
    rng = random.Random(spec.seed)
    out = []
    for _ in range(spec.num_rows):
        if spec.task == "add2":
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            prompt = f"What is {a} + {b}? Put the final answer in \\boxed{{}}."
        elif spec.task == "add20":
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            prompt = f"What is {a} + {b}? End with the number."
        else:
            raise ValueError(f"unknown benchmark task {spec.task!r}")
        out.append({"prompt": prompt, "answer": str(a + b)})
    return out


def reward_args(spec: Spec) -> dict[str, Any]:
    """The `math` reward: the boxed answer first (add2), or the last number only (add20)."""
    return {} if spec.task == "add2" else {"extract": ["last_number"]}


def score(spec: Spec, completions: list[str], answers: list[str]) -> list[float]:
    """grpokit's own reward functions, called directly: the same scores on both sides."""
    from grpokit.rewards.base import RewardSpec, Sample
    from grpokit.rewards.registry import build

    fn = build(RewardSpec("math", 1.0, reward_args(spec)))
    values = fn([Sample(completion=c, row={"answer": a}) for c, a in zip(completions, answers)])
    return [0.0 if v is None else float(v) for v in values]


# ---------------------------------------------------------------- TRL


def run_trl(spec: Spec, model_path: str, workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "answer": r["answer"]} for r in rows(spec)])
    steps: list[dict[str, float]] = []

    def reward(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return score(spec, texts, list(answer))

    class Timed(GRPOTrainer):
        gen_time = 0.0

        def _generate(self, prompts):
            start = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                Timed.gen_time += time.perf_counter() - start

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            Timed.gen_time, self.start = 0.0, time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps.append({"step_s": time.perf_counter() - self.start, "gen_s": Timed.gen_time})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs and steps:
                steps[-1]["reward"] = float(logs["reward"])
                steps[-1]["tokens"] = float(logs.get("completions/mean_length", 0.0)) * \
                    spec.prompts_per_step * spec.group_size

    config = GRPOConfig(
        output_dir=str(workdir), per_device_train_batch_size=spec.prompts_per_step * spec.group_size,
        num_generations=spec.group_size, max_completion_length=spec.max_new_tokens,
        temperature=spec.temperature, beta=spec.beta, num_iterations=1, loss_type="grpo",
        learning_rate=spec.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        max_steps=spec.steps, bf16=spec.bf16, use_cpu=True, logging_steps=1, report_to=[],
        save_strategy="no", seed=spec.seed, gradient_accumulation_steps=1,
        model_init_kwargs={"dtype": torch.float32}, dataloader_num_workers=0)
    trainer = Timed(model=model_path, reward_funcs=reward, args=config, train_dataset=data,
                    callbacks=[StepTimes()])
    trainer.train()
    return {"steps": steps}


# ---------------------------------------------------------------- grpokit


def grpokit_overrides(spec: Spec, data_path: Path, out: Path) -> list[str]:
    return [
        f"data.path={data_path}", "data.task=null", "data.eval_fraction=0",
        "rewards=" + json.dumps([{"name": "math", "args": reward_args(spec)}]),
        f"rollout.prompts_per_step={spec.prompts_per_step}", f"rollout.group_size={spec.group_size}",
        f"rollout.max_new_tokens={spec.max_new_tokens}", f"rollout.temperature={spec.temperature}",
        "algo.preset=grpo", f"algo.beta={spec.beta}", f"train.lr={spec.lr}",
        "train.adam_betas=[0.9,0.999]", f"train.steps={spec.steps}", f"train.seed={spec.seed}",
        f"model.autocast={'bf16' if spec.bf16 else 'off'}", "eval.before_and_after=false",
        "log.samples_every=0", "log.report_to=[]", "log.report=false", f"log.output_dir={out}",
        *spec.extra,
    ]


def run_grpokit(spec: Spec, workdir: Path) -> dict[str, Any]:
    from grpokit.config import load_config
    from grpokit.stages.grpo import train

    data_path = workdir / "rows.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows(spec)))
    out = workdir / "run"
    train(load_config(None, grpokit_overrides(spec, data_path, out)))
    steps = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        steps.append({"step_s": m["perf/step_time_s"], "gen_s": m["perf/gen_time_s"],
                      "reward": m["reward/mean"],
                      "tokens": m["completion/len_mean"] * spec.prompts_per_step * spec.group_size,
                      "skipped": bool(m.get("train/skipped", 0.0))})
    return {"steps": steps}


# ---------------------------------------------------------------- the parent's side


def default_model() -> str:
    from grpokit.runtime.models import ensure_default_model

    return str(ensure_default_model())


def spawn(side: str, spec: Spec, timeout: float | None = None,
          script: str = __file__) -> dict[str, Any]:
    """Run one side in a child process (`script side spec out`, this file by default); its
    result plus its peak RSS (GB) and wall-clock."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, script, side, str(spec_file), str(out_file)])
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0 or not out_file.exists():
            raise RuntimeError(f"the {side} side failed (exit {os.waitstatus_to_exitcode(status)})")
        result = json.loads(out_file.read_text())
    result.update(peak_rss_gb=usage.ru_maxrss / 2**20, wall_s=wall)  # ru_maxrss is in KiB
    return result


def summary(result: dict[str, Any]) -> dict[str, float]:
    """Medians over steps 2..N (step 1 warms up), and the peak RSS. A step grpokit skipped (no
    group with a reward spread, so no update: TRL runs its backward on zero advantages) is left
    out, so that both sides' medians are of steps that trained."""
    later = [s for s in result["steps"][1:] if not s.get("skipped")] or result["steps"]
    step = statistics.median(s["step_s"] for s in later)
    gen = statistics.median(s["gen_s"] for s in later)
    tokens = statistics.median(s.get("tokens", 0.0) for s in later)
    return {"step_s": step, "gen_s": gen, "train_s": step - gen, "tokens": tokens,
            "tokens_per_s": tokens / step,
            "peak_rss_gb": result["peak_rss_gb"]}


def prompt_tokens(spec: Spec, model_path: str) -> float:
    """Mean prompt length in tokens, through the model's chat template (both sides use it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                     add_generation_prompt=True, tokenize=False)
             for r in rows(spec)]
    return statistics.mean(len(tok(t, add_special_tokens=False).input_ids) for t in texts)


def step_flops(spec: Spec, model_path: str, prompt_len: float, completion_tokens: float) -> float:
    """The matmul FLOPs a step cannot avoid: each prompt's prefill once and every completion
    token's decode step (generation), then the reference forward (beta > 0) and the policy's
    forward and backward (3x a forward) over each prompt once and every completion token. The
    vocabulary projection runs at the positions that predict a completion token; attention's two
    matmuls are counted at each token's average context."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    d, heads, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    head = getattr(c, "head_dim", None) or d // heads
    layer = d * heads * head * 2 + d * kv * head * 2 + 3 * d * c.intermediate_size  # weights
    completion_len = completion_tokens / (spec.prompts_per_step * spec.group_size)
    context = prompt_len + completion_len / 2
    per_token = 2 * c.num_hidden_layers * (layer + 2 * heads * head * context)
    vocab = 2 * d * c.vocab_size
    prompt = spec.prompts_per_step * prompt_len * per_token
    completion = completion_tokens * (per_token + vocab)
    passes = 1 + (1 if spec.beta else 0) + 3  # generation, reference, policy forward + backward
    return passes * (prompt + completion)


def _child(side: str, spec_file: str, out_file: str) -> None:
    spec = Spec(**json.loads(Path(spec_file).read_text()))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        if side == "trl":
            result = run_trl(spec, default_model(), Path(tmp))
        elif side == "grpokit":
            result = run_grpokit(spec, Path(tmp))
        else:
            raise SystemExit(f"unknown side {side!r}: trl or grpokit")
    result["self_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(out_file).write_text(json.dumps(result))


if __name__ == "__main__":
    _child(*sys.argv[1:4])

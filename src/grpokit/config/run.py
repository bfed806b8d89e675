"""The run's bookkeeping sections of the config tree: held-out evaluation, logging, checkpoints
and the deadlines of reward scoring (`grpokit.config` assembles the tree and re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from grpokit.config.typed import choice_list
from grpokit.rewards.base import REWARD_TIMEOUT_S
from grpokit.rewards.extract import STRATEGIES


@dataclass
class EvalConfig:
    num_prompts: int = 64
    """Held-out prompts evaluated (0 disables evaluation)."""
    samples_per_prompt: int = 1
    """n completions per prompt (pass@k needs n >= k)."""
    k: list[int] = field(default_factory=lambda: [1])
    """k values for pass@k and maj@k."""
    temperature: float = 0.0
    """Sampling temperature for evaluation (0 = greedy; needs samples_per_prompt = 1)."""
    before_and_after: bool = True
    """`grpokit train` evaluates before training and after it."""
    every: int = 0
    """Also evaluate every N steps (0 disables)."""
    correct_reward: str | None = None
    """The reward function whose value decides whether a sample is correct (pass@k, maj@k);
    null: the first of the run's reward functions (the task's accuracy reward)."""
    correct_threshold: float = 1.0
    """A sample is correct when that reward is at least this (an unscorable sample never is)."""
    answer_extractors: list[str] = choice_list(["answer_tag", "boxed", "last_number"],
                                               *STRATEGIES)
    """How maj@k finds a sample's answer: the extractors tried in order, the first that finds any
    giving it (its last answer; rewards/extract.py)."""
    batch_size: int = 64
    """Completions per generation call (prompts × samples_per_prompt; at least one prompt)."""


@dataclass
class LogConfig:
    output_dir: str = "runs/default"
    """Folder of the run: config, metrics, samples, local tracker files and checkpoints."""
    samples_every: int = 5
    """Write sample completions every N steps (0 disables)."""
    num_samples: int = 4
    """Completions written each time samples are logged."""
    report: bool = True
    """Write report.html (curves, settings, samples; `grpokit report`) at the end of the run."""
    report_every: int = 0
    """Also rewrite the report every N steps while training (0: only at the end)."""
    report_to: list[str] = choice_list(["tensorboard"], "tensorboard", "wandb", "mlflow",
                                       import_paths=True)
    """Trackers that get the metrics, samples and config too ([]: none; docs/runs.md), or a
    sink of one's own by import path (`my_sinks:Sink`, made as Sink(cfg, out, start_step))."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Save a checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Keep the last K checkpoints (0 keeps all)."""


@dataclass
class RewardRunnerConfig:
    max_error_rate: float = 0.1
    """Stop when more than this share of a batch's samples fail in one reward function."""
    timeout: float = REWARD_TIMEOUT_S
    """Deadline in seconds for one reward function on one batch."""
    allow_unscorable: bool = False
    """Train through a step in which every completion is unscorable (every reward function gave
    None or failed on each): such a step has no learning signal. Off, it stops the run with an
    error naming the step and the reward functions, since it usually means the data does not
    fit the rewards (a gold that does not parse, a field under another name)."""


def run_checks(e: EvalConfig, log: LogConfig, ckpt: CheckpointConfig,
               runner: RewardRunnerConfig) -> list[tuple[bool, str]]:
    """Cross-field checks of the eval, log, checkpoint and reward_runner sections
    (config.validate runs them)."""
    return [
        (min(e.num_prompts, e.every, log.samples_every, log.num_samples,
             log.report_every, ckpt.every, ckpt.keep_last) >= 0
         and e.samples_per_prompt >= 1,
         "eval.num_prompts, eval.every, log.samples_every, log.num_samples, log.report_every, "
         "checkpoint.every and checkpoint.keep_last must be >= 0, eval.samples_per_prompt >= 1"),
        (0 <= runner.max_error_rate <= 1 and runner.timeout > 0,
         "reward_runner.max_error_rate must be in [0, 1] and reward_runner.timeout > 0"),
        (e.temperature > 0 or e.samples_per_prompt == 1,
         "eval.samples_per_prompt > 1 needs eval.temperature > 0 (greedy samples are identical)"),
        (e.batch_size >= 1 and bool(e.answer_extractors),
         f"eval.batch_size must be >= 1 and eval.answer_extractors must name at least one "
         f"extractor, got {e.batch_size} and {e.answer_extractors}"),
        (all(1 <= k <= e.samples_per_prompt for k in e.k),
         f"eval.k values must be between 1 and eval.samples_per_prompt "
         f"({e.samples_per_prompt}), got {e.k}"),
    ]

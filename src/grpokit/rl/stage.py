"""An RL stage on the run loop (grpokit/training/loop.py): `RLStage` (GRPO's, and PPO's with its own
step), the parts every RL stage builds (`rl_parts`), and the learning-rate schedule's horizon."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpokit.algo.advantages import register_estimator
from grpokit.algo.surrogates import register_loss
from grpokit.config import Config, ConfigError
from grpokit.rewards.user import is_import_path, load_object
from grpokit.rl.metrics import sample_records
from grpokit.training.batch import TrainingBatch
from grpokit.training.evaluation import Greedy
from grpokit.training.groups import PromptGroups
from grpokit.training.session import Session, build_session
from grpokit.training.state import RunState


@dataclass
class RLStage:
    """GRPO (and PPO, with its own step) on the run loop (grpokit/training/loop.py): a session, the
    training and held-out prompts, the run state, and the last step's batch for its samples."""

    session: Session
    groups: PromptGroups
    held_out: PromptGroups | None
    state: RunState
    notes: list[str]
    step_fn: Callable[[Session, PromptGroups, RunState], tuple[TrainingBatch, dict[str, float]]]
    batch: TrainingBatch | None = None

    @property
    def cfg(self) -> Config:
        return self.session.cfg

    @property
    def model(self) -> torch.nn.Module:
        return self.session.model

    @property
    def tokenizer(self) -> Any:
        return self.session.tokenizer

    def begin(self, out: Path) -> None:
        pass

    def step(self) -> dict[str, float]:
        self.batch, metrics = self.step_fn(self.session, self.groups, self.state)
        return metrics

    def samples(self, step: int, count: int) -> list[dict[str, Any]]:
        return sample_records(self.batch, self.groups.names, count)

    def evaluate(self, jsonl: Path | None) -> dict[str, float]:
        """The held-out evaluation (evaluation.Greedy); {} without held-out prompts."""
        if self.held_out is None:
            return {}
        return Greedy(self.session, self.held_out, self.cfg.train.seed)(jsonl)

    def finish(self, out: Path) -> dict[str, Any]:
        return {}



def rl_parts(cfg: Config, saved: dict[str, Any] | None
             ) -> tuple[Session, PromptGroups, PromptGroups | None]:
    """The session (weights from the checkpoint when resuming), the training prompts and the
    held-out prompts of an RL stage: every check of rewards and prompts runs here."""
    register_user_algo(cfg)
    session = build_session(cfg, resume_from=None if saved is None else saved["path"] / "model")
    cfg = session.cfg
    groups = PromptGroups(session, session.task.train_rows)
    rows = session.task.eval_rows[: cfg.eval.num_prompts]
    held_out = PromptGroups(session, rows, runner=groups.runner) if rows else None
    return session, groups, held_out



def register_user_algo(cfg: Config) -> None:
    """A loss or estimator the config gives by import path (`algo.loss: my_losses:my_loss`),
    loaded as user reward functions are (rewards/user.py) and registered under that path, so
    that the math finds it by name; a path that does not load is a ConfigError naming the key."""
    for key, register in (("loss", register_loss), ("estimator", register_estimator)):
        entry = getattr(cfg.algo, key)
        if not is_import_path(entry):
            continue
        try:
            found = load_object(entry, f"algo.{key}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not callable(found):
            raise ConfigError(f"algo.{key}={entry!r} names {type(found).__name__}, not a function")
        register(entry, found)


def total_updates(cfg: Config) -> int:
    """Optimizer steps of the whole run: the horizon of the learning-rate schedule."""
    return cfg.train.steps * cfg.train.epochs_per_batch * cfg.train.minibatches

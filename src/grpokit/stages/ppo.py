"""PPO with a learned critic: `grpokit ppo`, the baseline GRPO is measured against (docs/ppo.md).

One step is GRPO's step with the group baseline replaced by a value model: the same sampling
(groups.sample_groups: B prompts × G completions, the same rewards), then the critic's values of
every completion token, GAE (algo/gae.py) from the outcome reward at the last token, and the same
policy update as GRPO (rl/update.py update_policy: clipped surrogate, KL to the reference,
aggregation, μ epochs × minibatches × micro-batches) on the per-token advantages; then μ passes of
the clipped value loss on the critic, and the weight sync. What it shares with GRPO lives in rl/.

ppo.value_model: `separate` copies the policy's decoder into the critic (its own weights and
AdamW state: the memory GRPO saves), `head` puts a linear head on the policy's own hidden states
(detached, so the decoder learns only from the policy loss). One process, full fine-tuning.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from grpokit.algo.gae import gae, outcome_token_rewards, value_loss, whiten
from grpokit.config import Config, ConfigError
from grpokit.rl.metrics import perf_metrics, rollout_metrics, sync_metrics
from grpokit.rl.stage import RLStage, rl_parts, total_updates
from grpokit.rl.update import update_policy
from grpokit.runtime import distributed as dist
from grpokit.runtime.precision import autocast_paused
from grpokit.training.batch import TrainingBatch, batch_device, loss_mask_of
from grpokit.training.groups import PromptGroups, sample_groups
from grpokit.training.logprobs import position_ids, trim
from grpokit.training.loop import run
from grpokit.training.session import Session
from grpokit.training.state import NonFiniteError, RunState, new_run_state


class Critic(torch.nn.Module):
    """V(state before each completion token): a decoder and a linear head (zero-initialised, so
    every value starts at 0)."""

    def __init__(self, policy: torch.nn.Module, value_model: str):
        super().__init__()
        self.shared = value_model == "head"
        if self.shared:
            self._policy_decoder = [policy.get_decoder()]  # a list: not a submodule of the critic
        else:
            self.decoder = copy.deepcopy(policy.get_decoder())
            self.decoder.requires_grad_(True)
        self.head = torch.nn.Linear(policy.config.hidden_size, 1, dtype=torch.float32,
                                    device=next(policy.parameters()).device)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
        """Values (N, T), 0 on padding."""
        t_full = completion_ids.shape[1]
        p_ids, p_mask, c_ids, c_mask = trim(prompt_ids, prompt_mask, completion_ids,
                                            completion_mask)
        p, t = p_ids.shape[1], c_ids.shape[1]
        attention = torch.cat([p_mask, c_mask], dim=1).long()  # (n, P + T)
        decoder = self._policy_decoder[0] if self.shared else self.decoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.shared):
            hidden = decoder(input_ids=torch.cat([p_ids, c_ids], dim=1), attention_mask=attention,
                             position_ids=position_ids(attention), use_cache=False
                             ).last_hidden_state[:, p - 1: p - 1 + t]  # (n, T, H)
        with autocast_paused(hidden.device):  # bf16 autocast would round every value to 8 bits
            values = self.head(hidden.float()).squeeze(-1)  # (n, T) fp32
        values = torch.where(c_mask.bool(), values, 0.0)
        return torch.nn.functional.pad(values, (0, t_full - t))  # (n, T_full)


@dataclass
class PPOState(RunState):
    """The run state of GRPO plus the critic and its optimizer (saved in trainer.pt)."""

    critic: Critic | None = None
    critic_optimizer: torch.optim.Optimizer | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "critic": self.critic.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        super().load_state_dict(saved)
        self.critic.load_state_dict(saved["critic"])
        self.critic_optimizer.load_state_dict(saved["critic_optimizer"])


def _values(session: Session, critic: Critic, r, idx: torch.Tensor) -> torch.Tensor:
    with session.autocast():
        return critic(r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx],
                      r.completion_mask[idx])  # (n, T)


@torch.no_grad()
def advantages_and_returns(session: Session, critic: Critic, scored, mask: torch.Tensor):
    """Old values, GAE advantages (whitened when ppo.whiten_advantages) and returns, (N, T)."""
    p, r = session.cfg.ppo, scored.rollout
    critic.eval()
    old_values = torch.cat([_values(session, critic, r, idx) for idx in
                            torch.arange(len(mask)).split(session.cfg.train.micro_batch_size)])
    reward = torch.nan_to_num(scored.reward.float(), nan=0.0)  # unscorable rows are masked out
    advantages, returns = gae(outcome_token_rewards(reward, mask), old_values, mask,
                              gamma=p.gamma, lam=p.gae_lambda)
    if p.whiten_advantages:
        advantages = whiten(advantages, mask)
    return old_values, advantages, returns


def update_critic(session: Session, state: PPOState, batch: TrainingBatch,
                  old_values: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """μ passes of the clipped value loss over the step's tokens, one critic step per pass."""
    cfg, critic, mask = session.cfg, state.critic, batch.loss_mask
    critic.train()
    num_tokens, losses, clip_fracs = int(mask.sum()), [], []
    params = [q for q in critic.parameters() if q.requires_grad]
    for _ in range(cfg.train.epochs_per_batch):
        total = 0.0
        for idx in torch.arange(len(mask)).split(cfg.train.micro_batch_size):
            values = _values(session, critic, batch.rollout, idx)
            loss, metrics = value_loss(values, old_values[idx], returns[idx], mask[idx],
                                       clip=cfg.ppo.value_clip, num_tokens=num_tokens)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"non-finite value loss {loss.item()}")
            loss.backward()
            total += loss.item()
            clip_fracs.append(metrics["value_clip_frac"])
        max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(norm):
            state.critic_optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(f"non-finite critic gradient (norm {norm.item()})")
        state.critic_optimizer.step()
        state.critic_optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return {"loss/value": sum(losses) / len(losses),
            "loss/value_clip_frac": sum(clip_fracs) / max(len(clip_fracs), 1)}


def ppo_step(session: Session, groups: PromptGroups, state: PPOState
             ) -> tuple[TrainingBatch, dict[str, float]]:
    """One PPO step; returns the training batch and the step's metrics."""
    cfg, start = session.cfg, time.perf_counter()
    scored, stats = sample_groups(groups, state.sampler, state.step, cfg)
    gen_time = time.perf_counter() - start
    included, mask = loss_mask_of(scored, cfg)  # (N,), (N, T)
    scorable = ~torch.isnan(scored.reward)  # (N,): unscorable completions carry no loss
    mask, included = mask & scorable[:, None], included & scorable
    device = batch_device(scored)
    old_values, advantages, returns = advantages_and_returns(session, state.critic, scored,
                                                             mask.to(device))
    batch = TrainingBatch(scored, advantages, mask.to(device), included.to(device))
    metrics = {**stats.metrics(), **rollout_metrics(batch, groups.names)}
    if stats.no_signal:
        # Dynamic sampling trains on informative groups only and found none: the batch is the
        # tied first round, kept for its metrics. Neither model steps (docs/ppo.md, Dynamic
        # sampling), as in GRPO's train_step.
        metrics.update({"train/skipped": 1.0, "train/tokens": 0.0})
    else:
        metrics.update(update_policy(session, state, batch))
        metrics.update(update_critic(session, state, batch, old_values, returns))
        metrics["train/skipped"] = 0.0
        session.engine.sync_weights()
        metrics.update(sync_metrics(session.engine))
    metrics.update(perf_metrics(batch, metrics["train/tokens"], gen_time,
                                time.perf_counter() - start))
    return batch, metrics


def _check(cfg: Config) -> None:
    if cfg.model.lora.enabled:
        raise ConfigError("model.lora.enabled: grpokit ppo trains full weights (its critic is "
                          "a copy of the decoder or a head on it); set it to false")
    if dist.world_size() > 1:
        raise ConfigError("grpokit ppo runs in one process; use grpokit train across ranks")
    if cfg.tools.environment is not None:
        raise ConfigError("tools.environment: grpokit ppo samples single-turn completions (its "
                          "GAE runs over contiguous completion tokens, and tool output would cut "
                          "them); use grpokit train for tool episodes")
    if cfg.algo.teacher is not None or cfg.algo.cov_control != "none":
        raise ConfigError("algo.teacher and algo.cov_control: grpokit ppo trains on GAE "
                          "advantages alone; use grpokit train for distillation, Clip-Cov and "
                          "KL-Cov")


def _start(cfg: Config, saved: dict[str, Any] | None) -> RLStage:
    session, groups, held_out = rl_parts(cfg, saved)
    cfg = session.cfg
    base = new_run_state("ppo", cfg, session.model, len(groups.rows),
                         cfg.rollout.prompts_per_step, total_updates(cfg),
                         session.reference if cfg.algo.ref_refresh_steps else None)
    critic = Critic(session.model, cfg.ppo.value_model)
    t = cfg.train
    optimizer = torch.optim.AdamW([q for q in critic.parameters() if q.requires_grad],
                                  lr=cfg.ppo.value_lr, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    state = PPOState(**{f.name: getattr(base, f.name) for f in fields(RunState)},
                     critic=critic, critic_optimizer=optimizer)
    notes = [f"[bold]grpokit ppo[/]: critic {cfg.ppo.value_model}, γ {cfg.ppo.gamma}, "
             f"λ {cfg.ppo.gae_lambda}, value clip {cfg.ppo.value_clip}",
             session.precision_note, session.prefix_note]
    return RLStage(session, groups, held_out, state, [n for n in notes if n], ppo_step)


def train_ppo(cfg: Config, *, resume: str | Path | None = None, console=None) -> dict[str, Any]:
    """Run PPO as the config says on the run loop of every stage (grpokit/training/loop.py): the run
    folder, checkpoints, evaluations and report of `grpokit train`; returns the final
    evaluations and the checkpoint path."""
    _check(cfg)
    return run(cfg, "ppo", _start, resume=resume, console=console)

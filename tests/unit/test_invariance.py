"""Splitting an optimizer step never changes its gradient (DESIGN.md §3, aggregation).

A shared parameter θ drives the log-probs of every completion, as a model's weights do. The
gradient of θ from one full batch must equal the sum of the gradients of micro-batches (or of
simulated ranks) that each pass the step's global num_sequences / num_tokens to `policy_loss`, and
extra padded positions must change nothing.
"""

from __future__ import annotations

import pytest
import torch

from grpokit.algo import LossKnobs, policy_loss

N, T = 6, 5
MASK = torch.tensor([
    [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0],
]).bool()  # (N, T): uneven lengths and one empty completion
MODES = ["seq_mean_token_mean", "token_mean", "seq_sum_norm"]
PARAMS = [(mode, level) for mode in MODES for level in ("token", "sequence")]


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = -0.3 - 2 * torch.rand(N, T, generator=gen, dtype=torch.float64)  # (N, T)
    return {
        "base": base,
        "features": torch.randn(N, T, generator=gen, dtype=torch.float64),  # (N, T)
        "old": base + 0.4 * (torch.rand(N, T, generator=gen, dtype=torch.float64) - 0.5),
        "ref": base + 0.4 * (torch.rand(N, T, generator=gen, dtype=torch.float64) - 0.5),
        "advantages": torch.tensor([1.2, -0.4, 0.0, -0.9, 0.7, -0.6], dtype=torch.float64),
    }


def _knobs(mode: str, level: str) -> LossKnobs:
    return LossKnobs(ratio=level, aggregation=mode, beta=0.04, kl="k3", max_completion_length=T)


def _theta_grad(batch, rows, knobs, *, width=T, num_sequences=None, num_tokens=None, theta=None):
    """Loss of `rows` padded to `width` columns, and d loss / d θ accumulated into θ.grad."""
    theta = theta if theta is not None else torch.zeros(T, dtype=torch.float64, requires_grad=True)

    def cols(x: torch.Tensor, fill: float) -> torch.Tensor:
        x = x[rows][:, :width]  # (n, min(width, T))
        pad = x.new_full((x.shape[0], max(width - T, 0)), fill)
        return torch.cat([x, pad], dim=1)  # (n, width)

    # Padded positions hold garbage, as left-over buffers would; the mask must neutralize it.
    theta_w = torch.cat([theta, theta.new_zeros(max(width - T, 0))])[:width]  # (width,)
    logprobs = cols(batch["base"], -7.0) + 0.1 * cols(batch["features"], 3.0) * theta_w  # (n, w)
    mask = cols(MASK.to(torch.float64), 0.0).bool()  # (n, w)
    loss, _ = policy_loss(logprobs, cols(batch["old"], 9.0), batch["advantages"][rows], mask, knobs,
                          ref_logprobs=cols(batch["ref"], -30.0), num_sequences=num_sequences,
                          num_tokens=num_tokens)
    loss.backward()
    return loss.detach(), theta


def _full(batch, knobs):
    return _theta_grad(batch, list(range(N)), knobs)


def _global_counts() -> dict[str, int]:
    return {"num_sequences": N, "num_tokens": int(MASK.sum())}


@pytest.mark.parametrize("mode,level", PARAMS)
def test_micro_batch_split_keeps_loss_and_gradient(mode, level):
    batch, knobs = _batch(), _knobs(mode, level)
    loss, theta = _full(batch, knobs)
    split = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    total = 0.0
    for rows in ([0, 1], [2], [3, 4, 5]):
        # Each micro-batch is padded only to its own longest completion.
        width = int(MASK[rows].sum(dim=1).max().clamp(min=1))
        part, _ = _theta_grad(batch, rows, knobs, width=width, theta=split, **_global_counts())
        total += part
    assert total == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(split.grad, theta.grad, atol=1e-6)


@pytest.mark.parametrize("mode,level", PARAMS)
def test_rank_split_sum_of_gradients(mode, level):
    batch, knobs = _batch(1), _knobs(mode, level)
    _, theta = _full(batch, knobs)
    grads = []
    for rows in ([0, 2, 4], [1, 3, 5]):
        _, rank_theta = _theta_grad(batch, rows, knobs, **_global_counts())
        grads.append(rank_theta.grad)
    # Summing the ranks' gradients (an all-reduce SUM) rebuilds the single-process gradient.
    assert torch.allclose(grads[0] + grads[1], theta.grad, atol=1e-6)


@pytest.mark.parametrize("mode,level", PARAMS)
def test_padding_changes_nothing(mode, level):
    batch, knobs = _batch(2), _knobs(mode, level)
    loss, theta = _full(batch, knobs)
    padded_loss, padded = _theta_grad(batch, list(range(N)), knobs, width=T + 3)
    assert padded_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(padded.grad, theta.grad, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_local_counts_would_change_the_gradient(mode):
    """Guards the tests above against being vacuous: with each micro-batch's own counts instead
    of the step's global ones, the same kind of split does change the gradient."""
    batch, knobs = _batch(3), _knobs(mode, "token")
    _, theta = _full(batch, knobs)
    split = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    for rows in ([0, 1], [2, 3, 4, 5]):
        _theta_grad(batch, rows, knobs, theta=split)
    assert not torch.allclose(split.grad, theta.grad, atol=1e-6)

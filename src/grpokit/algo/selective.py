"""Token log-probs of a causal LM's completions from its final hidden states (DESIGN.md §4):
the vocabulary projection runs only where a completion token is predicted, in chunks, with a
written-out backward, and optionally over the sampler's kept set (algo.sampling_support).

Everything here is computed in fp32 whatever dtype the model ran in.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from grpokit.algo.support import Truncation, kept_threshold, restrict_

_OUTSIDE = torch.finfo(torch.float32).min
"""The logit of a token outside the sampler's kept set (algo.sampling_support=replay): finite, so
its probability is exactly 0 and 0 · logit stays 0 in the entropy."""


def _kept_threshold(logits: torch.Tensor, labels: torch.Tensor,
                    truncation: Truncation) -> torch.Tensor:
    """τ (C, 1) of the sampler's kept set at each row, lowered to the sampled token's logit where a
    rounding difference put it just outside: a drawn token is in the set it was drawn from."""
    tau = kept_threshold(logits, truncation)  # (C, 1)
    return torch.minimum(tau, logits.gather(-1, labels.unsqueeze(-1)))


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                    temperature: float, with_entropy: bool,
                    truncation: Truncation | None = None) -> torch.Tensor:
    logits = (hidden @ weight.T).float()  # (C, V)
    if temperature != 1.0:
        logits.div_(temperature)  # in place: mm's backward does not need its output
    if truncation is not None:
        tau = _kept_threshold(logits.detach(), labels, truncation)  # (C, 1)
        logits = logits.masked_fill(logits < tau, _OUTSIDE)
    logsumexp = torch.logsumexp(logits, dim=-1)  # (C,)
    logprobs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logsumexp  # (C,)
    if not with_entropy:
        return logprobs.unsqueeze(-1)
    probs = torch.softmax(logits, dim=-1)  # (C, V)
    entropy = logsumexp - (probs * logits).sum(dim=-1)  # (C,)
    return torch.stack([logprobs, entropy], dim=-1)


def _matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the vocabulary projection runs in: autocast's when it is on, else the input's."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _chunks(rows: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def _projected(hidden: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None
               ) -> torch.Tensor:
    """fp32 logits (C, V) of one chunk, written into `out` (a buffer reused across the chunks of
    a pass, or None for a new tensor). In fp32 the matmul writes there directly; in bf16 its
    product is upcast into it."""
    if hidden.dtype == torch.float32 and weight.dtype == torch.float32:
        return torch.mm(hidden, weight.T, out=out) if out is not None else hidden @ weight.T
    product = hidden @ weight.T
    return out.copy_(product) if out is not None else product.float()


def _forward_chunks(hidden, weight_low, labels, temperature: float, with_entropy: bool,
                    chunk_size: int, truncation: Truncation | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, entropies (empty unless asked), log-normalizers and kept-set thresholds (M, 1;
    empty without a truncation) of every row, chunk by chunk through one (C, V) fp32 logits
    buffer. `weight_low` is already in the matmul dtype. With a truncation, each row's
    distribution is the one the sampler drew from: renormalised over its kept set."""
    rows, dtype = hidden.shape[0], weight_low.dtype
    logprobs = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    logsumexp = torch.empty_like(logprobs)
    entropy = torch.empty_like(logprobs) if with_entropy else logprobs.new_zeros(0)
    tau = logprobs.new_empty((rows if truncation is not None else 0, 1))
    buffer = None
    for part in _chunks(rows, chunk_size):
        out = None if buffer is None else buffer[: part.stop - part.start]
        logits = _projected(hidden[part].to(dtype), weight_low, out)  # (C, V) fp32
        buffer = logits if buffer is None else buffer
        if temperature != 1.0:
            logits.div_(temperature)
        if truncation is not None:
            tau[part] = _kept_threshold(logits, labels[part], truncation)
            restrict_(logits, tau[part], _OUTSIDE)
        torch.logsumexp(logits, dim=-1, out=logsumexp[part])
        logprobs[part] = logits.gather(-1, labels[part].unsqueeze(-1)).squeeze(-1) - logsumexp[part]
        if with_entropy:
            # One (C, V) temporary: the probabilities, times the logits in place.
            probs_times_logits = logits.sub(logsumexp[part, None]).exp_().mul_(logits)
            entropy[part] = logsumexp[part] - probs_times_logits.sum(dim=-1)
    return logprobs, entropy, logsumexp, tau


class _SelectiveLogprobs(torch.autograd.Function):
    """The log-probs of every row with a written-out backward: one node for all chunks of a
    pass. The weight is cast to the matmul dtype once (not once per chunk and direction), the
    (C, V) logits live in one buffer reused by every chunk, and the weight's gradient is summed
    over the chunks in one fp32 tensor; each tensor of the weight's size is made once per pass,
    not once per chunk. Only the hidden states, labels and log-normalizers are kept for backward,
    which recomputes each chunk's logits once and uses
    d log p(y) / d z = onehot(y) - softmax(z) (divided by the temperature). The entropy, when
    asked, comes out of the same forward as a metric, without a gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature: float, with_entropy: bool,
                chunk_size: int, truncation: Truncation | None):
        weight_low = weight.to(_matmul_dtype(hidden))  # no copy when the dtypes agree
        logprobs, entropy, logsumexp, tau = _forward_chunks(
            hidden, weight_low, labels, temperature, with_entropy, chunk_size, truncation)
        ctx.save_for_backward(hidden, weight, weight_low, labels, logsumexp, tau)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, weight_low, labels, logsumexp, tau = ctx.saved_tensors
        dtype, temperature = weight_low.dtype, ctx.temperature
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight, buffer = None, None
        for part in _chunks(hidden.shape[0], ctx.chunk_size):
            h = hidden[part].to(dtype)
            out = None if buffer is None else buffer[: part.stop - part.start]
            grad = _projected(h, weight_low, out)  # the chunk's logits (C, V), fp32
            buffer = grad if buffer is None else buffer
            if temperature != 1.0:
                grad.div_(temperature)
            if tau.numel():  # the kept set of the forward: tokens outside get probability 0
                restrict_(grad, tau[part], _OUTSIDE)
            g = grad_logprobs[part]
            grad.sub_(logsumexp[part, None]).exp_().mul_(-g[:, None])  # -softmax · upstream
            grad.scatter_add_(-1, labels[part].unsqueeze(-1), g.unsqueeze(-1))
            if temperature != 1.0:
                grad.div_(temperature)
            grad = grad.to(dtype)
            if grad_hidden is not None:
                grad_hidden[part] = grad @ weight_low
            if ctx.needs_input_grad[1]:
                if grad_weight is None:
                    grad_weight = (grad.T @ h).to(weight.dtype)
                elif dtype == grad_weight.dtype:
                    grad_weight.addmm_(grad.T, h)
                else:  # bf16 products, summed in fp32
                    grad_weight.add_(grad.T @ h)
        return grad_hidden, grad_weight, None, None, None, None, None


def selective_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    truncation: Truncation | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of `labels` from final hidden states, `chunk_size` rows at a time.

    hidden (M, H) holds only the positions that predict completion tokens, so the vocabulary
    projection never runs for prompt or padding positions, and the (M, V) logits exist one chunk at
    a time: under autograd each chunk's logits are recomputed in backward instead of being
    stored. The entropies carry a gradient only with `entropy_grad` (an entropy bonus in the
    loss); otherwise they are a metric and cost no backward. With a `truncation` (the sampler's
    top-k / top-p, algo.sampling_support=replay) every row's distribution is renormalised over the
    set the sampler kept there (algo/support.py), the entropies too.
    """
    temperature = float(temperature)
    if truncation is not None and not truncation.active(weight.shape[0]):
        truncation = None
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if grad and with_entropy and entropy_grad:
        out = torch.cat([checkpoint(_chunk_logprobs, hidden[part], weight, labels[part],
                                    temperature, True, truncation, use_reentrant=False)
                         for part in _chunks(hidden.shape[0], chunk_size)])  # (M, 2)
        return out[:, 0], out[:, 1]
    if grad:
        lp, ent = _SelectiveLogprobs.apply(hidden, weight, labels, temperature, with_entropy,
                                           chunk_size, truncation)
    else:
        lp, ent, _, _ = _forward_chunks(hidden, weight.to(_matmul_dtype(hidden)), labels,
                                        temperature, with_entropy, chunk_size, truncation)
    return lp, (ent if with_entropy else None)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor,
                         temperature: float = 1.0,
                         truncation: Truncation | None = None) -> torch.Tensor:
    """Log-probs of labels from full logits (..., V) -> (...); for small inputs and tests. With a
    truncation, over the sampler's kept set at each position (as `selective_logprobs`)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if truncation is not None and truncation.active(logits.shape[-1]):
        flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        tau = _kept_threshold(flat.detach(), flat_labels, truncation)  # (M, 1)
        logits = flat.masked_fill(flat < tau, _OUTSIDE).reshape(logits.shape)
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)

"""The policy-loss and estimator family of reference.py, in plain Python floats.

The REINFORCE++, whitened and GDPO advantages; the ratio levels' chain rule (token, sequence,
sequence_token); the CISPO, SAPO and GMPO policy terms, with the definitions of
docs/conformance.md ("The format"). Like reference.py: explicit loops and the `math` module only,
no torch, every gradient derived by hand and written next to the code. This file imports nothing
from reference.py (reference.py loads it by path; the clipped surrogate is passed in), so it
carries its own small statistics helpers.

Notation: r the combined reward (None = unscorable), c = r − baseline, ρ the importance ratio,
A the advantage, eps = adv_eps, std = Bessel-corrected over the scorable entries, 0 below two.
"""

from __future__ import annotations

import math
from typing import Any, Callable

LOG_RATIO_CLAMP = 20.0
Matrix = list[list[float]]


def mean(values: list[float]) -> float:
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


def std0(values: list[float]) -> float:
    """Bessel-corrected standard deviation (divide by n − 1); 0 below two entries."""
    if len(values) < 2:
        return 0.0
    centre = mean(values)
    total = 0.0
    for value in values:
        total += (value - centre) ** 2
    return math.sqrt(total / (len(values) - 1))


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def tied(values: list[float]) -> bool:
    """A group without a usable baseline: fewer than two scorable entries, or all equal."""
    return len(values) < 2 or all(value == values[0] for value in values)


def groups(num: int, group_size: int) -> list[range]:
    return [range(start, start + group_size) for start in range(0, num, group_size)]


# --- advantages ---------------------------------------------------------------------------


def centred(reward: list[float | None], group_size: int, estimator: str) -> list[float | None]:
    """c_i = r_i − baseline_i over the scorable completions (None stays None).

    grpo:         baseline = mean of the group's scorable r
    rloo:         baseline = mean of the other scorable members of the group (c = 0 without any)
    reinforce_pp: baseline = mean of every scorable r of the batch (no groups at all)
    """
    scorable = [r for r in reward if r is not None]
    batch_mean = mean(scorable) if scorable else 0.0
    out: list[float | None] = [None] * len(reward)
    for group in groups(len(reward), group_size):
        members = [i for i in group if reward[i] is not None]
        for i in members:
            if estimator == "reinforce_pp":
                baseline = batch_mean
            elif estimator == "grpo":
                baseline = mean([reward[j] for j in members])
            else:
                others = [reward[j] for j in members if j != i]
                baseline = mean(others) if others else reward[i]
            out[i] = reward[i] - baseline
    return out


def family_advantages(reward: list[float | None], group_size: int, estimator: str, scale: str,
                      eps: float) -> list[float]:
    """Outcome advantages for estimator reinforce_pp, or for any estimator under scale whiten.

    group:  A = c / (std_group(r) + eps)      batch: A = c / (std_batch(r) + eps)      none: A = c
    whiten: A = (c − mean_batch(c)) / (std_batch(c) + eps), over every scorable completion of the
            batch (members of tied groups included: they are zeroed afterwards, not before)
    Unscorable completions get 0. grpo and rloo then zero every tied group (fewer than two scorable
    members, or equal rewards); reinforce_pp zeroes none (a tied group still differs from the
    batch mean).
    """
    c = centred(reward, group_size, estimator)
    scorable_c = [x for x in c if x is not None]
    scorable_r = [r for r in reward if r is not None]
    advantages = [0.0] * len(reward)
    for group in groups(len(reward), group_size):
        members = [i for i in group if reward[i] is not None]
        values = [reward[i] for i in members]
        if estimator != "reinforce_pp" and tied(values):
            continue
        for i in members:
            if scale == "whiten":
                advantages[i] = (c[i] - mean(scorable_c)) / (std0(scorable_c) + eps)
            else:
                divisor = {"group": std0(values) + eps, "batch": std0(scorable_r) + eps,
                           "none": 1.0}[scale]
                advantages[i] = c[i] / divisor
    return advantages


def gdpo_advantages(rewards: list[list[float | None]], weights: list[float], group_size: int,
                    scale: str, eps: float) -> list[float]:
    """GDPO: normalize each reward function k in its group, sum with the weights, whiten.

    d_ik = (r_ik − mean_g(r_k)) / (std_g(r_k) + eps) over the group's non-null r_k (batch: the
           std of every non-null r_k of the batch; none: no division); d_ik = 0 when the group has
           fewer than two non-null r_k or they all tie
    s_i  = Σ_k w_k d_ik over the non-null terms (None when every term is null)
    A_i  = (s_i − mean_batch(s)) / (std_batch(s) + eps) over the scorable completions, then 0 for
           unscorable completions and for every group tied in the combined reward Σ_k w_k r_ik.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"gdpo takes scale group, batch or none, got {scale!r}")
    d: list[list[float | None]] = [[None] * len(weights) for _ in rewards]
    for k in range(len(weights)):
        column = [row[k] for row in rewards]
        batch_std = std0([x for x in column if x is not None])
        for group in groups(len(rewards), group_size):
            members = [i for i in group if column[i] is not None]
            values = [column[i] for i in members]
            divisor = {"group": std0(values) + eps, "batch": batch_std + eps, "none": 1.0}[scale]
            for i in members:
                d[i][k] = 0.0 if tied(values) else (column[i] - mean(values)) / divisor
    s: list[float | None] = []
    for row in d:
        terms = [w * x for w, x in zip(weights, row) if x is not None]
        s.append(sum(terms) if terms else None)
    scorable = [x for x in s if x is not None]
    centre, spread = (mean(scorable), std0(scorable)) if scorable else (0.0, 0.0)
    combined = [sum(w * r for w, r in zip(weights, row) if r is not None)
                if any(r is not None for r in row) else None for row in rewards]
    advantages = [0.0] * len(rewards)
    for group in groups(len(rewards), group_size):
        if tied([combined[i] for i in group if combined[i] is not None]):
            continue
        for i in group:
            if s[i] is not None:
                advantages[i] = (s[i] - centre) / (spread + eps)
    return advantages


# --- ratio levels and policy terms -------------------------------------------------------


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    return math.exp(z) / (1.0 + math.exp(z))


def cispo_term(ratio_sg: float, advantage: float, logprob: float, clip_low: float,
               clip_high: float) -> tuple[float, float, float]:
    """CISPO (MiniMax-M1 eq. 4): p = −sg(clamp(ρ, 1−ε_low, 1+ε_high))·A·logp.

    Returns (p, dp/dρ, dp/dlogp directly). The weight is held fixed, so dp/dρ = 0 and
    dp/dlogp = −clamp(ρ)·A at every token, also where the weight is clamped. `ratio_sg` is ρ at
    the point where the stop-gradient is taken (the log-probs themselves unless told otherwise).
    """
    weight = min(max(ratio_sg, 1.0 - clip_low), 1.0 + clip_high)
    return -weight * advantage * logprob, 0.0, -weight * advantage


def sapo_term(ratio: float, advantage: float, tau_pos: float, tau_neg: float
              ) -> tuple[float, float, float]:
    """SAPO: p = −f(ρ)·A with f(x) = σ(τ(x − 1))·4/τ, τ = τ_pos if A > 0 else τ_neg.

    f'(x) = σ(z)(1 − σ(z))·τ·4/τ = 4σ(z)(1 − σ(z)) with z = τ(x − 1), so dp/dρ = −A·4σ(1 − σ)
    (the ratio level then supplies dρ/dlogp; at ρ = 1 the gradient is −A). A = 0 gives p = 0.
    Returns (p, dp/dρ, 0).
    """
    if advantage == 0.0:
        return 0.0, 0.0, 0.0
    tau = tau_pos if advantage > 0 else tau_neg
    sig = sigmoid(tau * (ratio - 1.0))
    return -sig * 4.0 / tau * advantage, -advantage * 4.0 * sig * (1.0 - sig), 0.0


def policy_grad(level: str, raw: Matrix, weights: Matrix, slopes: Matrix, direct: Matrix,
                mask: Matrix) -> Matrix:
    """d/dlogp of Σ w·c·p, with s = c·dp/dρ and e = c·dp/dlogp held at ρ (CISPO's only part).

    With ρ = exp(clamp(x, ±20)) and q = 1 when |x| < 20 (the clamp passes no gradient beyond):
    token:           w_t (s_t ρ_t q_t + e_t)
    sequence_token:  w_t (s_t ρ_t + e_t)           (dρ_t/dlogp_t = s_i, the detached ratio)
    sequence:        m_t / max(Σ m, 1) · q ρ Σ_{t'} w_{t'} s_{t'} + w_t e_t
    because dx_i/dlogp_{i,t} = m_{i,t} / max(Σ_t m_i, 1) and x_i enters every token of sequence i.
    """
    grad = []
    for i, row in enumerate(raw):
        ratio = [math.exp(_clamp(x, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)) for x in row]
        passes = [1.0 if abs(x) < LOG_RATIO_CLAMP or level == "sequence_token" else 0.0
                  for x in row]
        if level == "sequence":
            through_mean = sum(w * s for w, s in zip(weights[i], slopes[i])) * ratio[0] * passes[0]
            length = max(sum(mask[i]), 1)
            grad.append([m / length * through_mean + w * e if e else m / length * through_mean
                         for m, w, e in zip(mask[i], weights[i], direct[i])])
        else:  # (w * e is left out where e is 0, so a zero keeps the sign it had before CISPO)
            grad.append([w * s * r * q + w * e if e else w * s * r * q for w, s, r, q, e
                         in zip(weights[i], slopes[i], ratio, passes, direct[i])])
    return grad


def policy_terms(knobs: dict[str, Any], raw: Matrix, raw_sg: Matrix, adv: Matrix,
                 logprobs: Matrix, correction: Matrix, surrogate: Callable
                 ) -> tuple[Matrix, Matrix, Matrix]:
    """(c·p, c·dp/dρ, c·dp/dlogp directly) per token for loss clip (reference.surrogate, passed
    in), cispo or sapo; the correction weight c is a constant of the loss and scales all three.
    ρ comes from the log-ratios `raw`; CISPO's detached weight from `raw_sg`."""
    loss = knobs.get("loss", "clip")
    low, high = knobs["clip_low"], knobs["clip_high"]
    values, slopes, direct = [], [], []
    for i, row in enumerate(raw):
        value_row, slope_row, direct_row = [], [], []
        for t, x in enumerate(row):
            ratio = math.exp(_clamp(x, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
            if loss == "clip":
                p, slope = surrogate(ratio, adv[i][t], low, high, knobs.get("dual_clip"))
                terms = (p, slope, 0.0)
            elif loss == "cispo":
                ratio_sg = math.exp(_clamp(raw_sg[i][t], -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
                terms = cispo_term(ratio_sg, adv[i][t], logprobs[i][t], low, high)
            elif loss == "pg":
                terms = pg_term(ratio, adv[i][t])
            elif loss == "sapo":
                terms = sapo_term(ratio, adv[i][t], knobs.get("sapo_tau_pos", 1.0),
                                  knobs.get("sapo_tau_neg", 1.05))
            else:
                raise ValueError(f"unknown loss {loss!r}")
            value_row.append(correction[i][t] * terms[0])
            slope_row.append(correction[i][t] * terms[1])
            direct_row.append(correction[i][t] * terms[2])
        values.append(value_row)
        slopes.append(slope_row)
        direct.append(direct_row)
    return values, slopes, direct


def gmpo_sequence(diffs: list[float], mask_row: list[float], advantage: float, clip_low: float,
                  clip_high: float) -> tuple[float, list[float]]:
    """GMPO's geometric-mean ratio of one sequence and its derivative by each log-prob.

    l_t = clamp(logp_t − old_t, ±20) on the sampled tokens; l̃_t = min(l_t, ε_high) for A > 0,
    max(l_t, −ε_low) for A < 0, l_t for A = 0; g = exp(Σ_t m_t l̃_t / max(Σ_t m_t, 1)).
    dg/dlogp_t = g·m_t·q_t / max(Σ_t m_t, 1), q_t = 1 where l̃_t = l_t and |logp_t − old_t| < 20
    (a clipped or clamped token passes no gradient), else 0. Returns (g, [dg/dlogp_t]).
    """
    length = max(sum(mask_row), 1)
    total, passes = 0.0, []
    for x, m in zip(diffs, mask_row):
        l = min(max(x, -LOG_RATIO_CLAMP), LOG_RATIO_CLAMP)
        clipped = min(l, clip_high) if advantage > 0 else max(l, -clip_low) if advantage < 0 else l
        total += m * clipped
        passes.append(1.0 if m and clipped == l and abs(x) < LOG_RATIO_CLAMP else 0.0)
    g = math.exp(total / length)
    return g, [g * q / length for q in passes]


def gmpo_terms(diffs: Matrix, advantages: list[float], mask: Matrix, weights: Matrix,
               correction: Matrix, knobs: dict[str, Any]) -> tuple[Matrix, Matrix]:
    """Per-token GMPO term c_t·(−A_i g_i) on every loss token of sequence i, and its gradient.

    With loss = Σ_t w_t c_t (−A_i g_i) over sequence i (w the aggregation weights, c the fixed
    rollout-correction weights): dL/dlogp_u = (Σ_t w_t c_t)·(−A_i)·dg_i/dlogp_u. For
    seq_mean_token_mean without correction Σ_t w_t = 1/N: each sequence counts once.
    Returns (per-token policy terms, 0 off the mask; their gradient).
    """
    terms, grads = [], []
    for i, a in enumerate(advantages):
        if isinstance(a, list):
            raise ValueError("loss gmpo takes one advantage per completion, not step rewards")
        g, dg = gmpo_sequence(diffs[i], mask[i], a, knobs["clip_low"], knobs["clip_high"])
        terms.append([c * -a * g if m else 0.0 for c, m in zip(correction[i], mask[i])])
        weight = sum(w * c for w, c in zip(weights[i], correction[i]))
        grads.append([weight * -a * x for x in dg])
    return terms, grads


# --- the unclipped term, Clip-Cov / KL-Cov and on-policy distillation ---------------------


def pg_term(ratio: float, advantage: float) -> tuple[float, float, float]:
    """pg: p = −ρ·A with no clip, so dp/dρ = −A everywhere. Returns (p, dp/dρ, 0)."""
    return -ratio * advantage, -advantage, 0.0


def distill_advantages(advantages: Matrix, teacher: Matrix, old: Matrix, mask: Matrix,
                       coef: float) -> Matrix:
    """On-policy distillation: A_t + coef·(log π_teacher,t − log π_old,t) on the mask, 0 off
    it (`advantages` already per token)."""
    return [[(a + coef * (te - o)) if m else 0.0 for a, te, o, m in zip(*rows)]
            for rows in zip(advantages, teacher, old, mask)]


def cov_selection(adv: Matrix, old: Matrix, mask: Matrix, knobs: dict[str, Any],
                  margin: float = 1e-6) -> Matrix:
    """The tokens of cov_control (1.0 selected, 0.0 not) over the mask's M tokens in row order:
    c_k = (A_k − mean A)(old_k − mean old), n = max(floor(cov_ratio·M), 1); kl_cov takes the n
    largest c (ties by position), clip_cov every candidate low < c < high, which needs at most n
    candidates (a random draw among more is not derivable by hand). Fails when a c sits within
    `margin` of a bound, or the n-th and (n+1)-th largest are that close."""
    tokens = [(i, t) for i, row in enumerate(mask) for t, m in enumerate(row) if m]
    a = [adv[i][t] for i, t in tokens]
    lp = [old[i][t] for i, t in tokens]
    mean_a, mean_lp = mean(a), mean(lp)
    cov = [(x - mean_a) * (y - mean_lp) for x, y in zip(a, lp)]
    count = max(int(knobs.get("cov_ratio", 2e-4) * len(tokens)), 1)
    if knobs["cov_control"] == "kl_cov":
        order = sorted(range(len(cov)), key=lambda k: (-cov[k], k))
        if count < len(cov) and cov[order[count - 1]] - cov[order[count]] < margin:
            raise ValueError("kl_cov: the n-th and (n+1)-th covariances nearly tie")
        chosen = set(order[:count])
    else:
        low, high = knobs.get("clip_cov_low", 1.0), knobs.get("clip_cov_high", 5.0)
        if any(min(abs(c - low), abs(c - high)) < margin for c in cov):
            raise ValueError("clip_cov: a covariance sits on a bound of the band")
        chosen = {k for k, c in enumerate(cov) if low < c < high}
        if len(chosen) > count:
            raise ValueError(f"clip_cov: {len(chosen)} candidates for {count} tokens: a draw")
    selected = [[0.0] * len(row) for row in mask]
    for k in chosen:
        selected[tokens[k][0]][tokens[k][1]] = 1.0
    return selected


def cov_adjust(knobs: dict[str, Any], logprobs: Matrix, old: Matrix, selected: Matrix,
               correction: Matrix, values: Matrix, slopes: Matrix, direct: Matrix
               ) -> tuple[Matrix, Matrix, Matrix]:
    """(c·p, c·dp/dρ, c·dp/dlogp directly) with cov_control applied at the selected tokens:
    clip_cov: all three 0 (no value, no gradient); kl_cov: p gains coef·|d| with d = logp − old,
    so the value gains c·coef·|d| and the direct derivative c·coef·sign(d) (0 at d = 0)."""
    coef = knobs.get("kl_cov_coef", 1.0)
    for i, row in enumerate(selected):
        for t, chosen in enumerate(row):
            if not chosen:
                continue
            if knobs["cov_control"] == "clip_cov":
                values[i][t] = slopes[i][t] = direct[i][t] = 0.0
                continue
            d = logprobs[i][t] - old[i][t]
            sign = 1.0 if d > 0 else -1.0 if d < 0 else 0.0
            values[i][t] += correction[i][t] * coef * abs(d)
            direct[i][t] += correction[i][t] * coef * sign
    return values, slopes, direct


def kl_reward_advantages(reward: list[float | None], kl: Matrix, mask: Matrix, beta: float,
                         eps: float) -> Matrix:
    """REINFORCE++ with the KL in the reward: G_t = r − β·Σ_{s≥t, m_s} kl_s on the mask of a
    scorable completion; A_t = (G_t − mean G)/(std G + eps) over every such token (Bessel std);
    0 elsewhere, and for an unscorable completion (r None)."""
    returns, values = [], []
    for i, row in enumerate(mask):
        out: list[float | None] = [None] * len(row)
        if reward[i] is not None:
            for t, m in enumerate(row):
                if m:
                    tail = 0.0
                    for s in range(t, len(row)):
                        if row[s]:
                            tail += kl[i][s]
                    out[t] = reward[i] - beta * tail
                    values.append(out[t])
        returns.append(out)
    centre, spread = mean(values), std0(values)
    return [[0.0 if g is None else (g - centre) / (spread + eps) for g in row] for row in returns]

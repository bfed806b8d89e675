"""A deliberately naive reference for the math of DESIGN.md §3, in plain Python floats.

Every quantity is computed with explicit loops and the `math` module only (no torch, no autograd),
so that it shares no code and no numerical shortcuts with `grpokit.algo`. The gradient of the loss
with respect to the log-probs is derived by hand; the formulas are written out next to the code.

Lists stand in for tensors: a (N,) vector is `list[float]`, a (N, T) matrix is
`list[list[float]]`. `None` marks a reward that is "not applicable / could not score".

The policy losses cispo, sapo and gmpo and the estimators reinforce_pp, gdpo and the whiten scale
live in reference_family.py beside this file (loaded by path, so this module also works when it is
itself loaded by path, as tests/unit/test_conformance.py does). A knob a vector leaves out keeps the
old behaviour: loss clip, no whitening.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any


def _load_family() -> Any:
    path = Path(__file__).resolve().with_name("reference_family.py")
    spec = importlib.util.spec_from_file_location("grpokit_conformance_reference_family", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


family = _load_family()

LOG_RATIO_CLAMP = 20.0
"""The log importance ratio is clamped to ±20 before exp (DESIGN.md §3)."""

Matrix = list[list[float]]


def mean(values: list[float]) -> float:
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


def std_bessel(values: list[float]) -> float:
    """Sample standard deviation with Bessel's correction (divide by n - 1)."""
    centre = mean(values)
    total = 0.0
    for value in values:
        total += (value - centre) ** 2
    return math.sqrt(total / (len(values) - 1))


def all_tie(values: list[float]) -> bool:
    return all(value == values[0] for value in values)


def combine_rewards(rewards: list[list[float | None]], weights: list[float]) -> list[float | None]:
    """r_i = Σ_k w_k r_ik over the non-None terms; None when every term is None."""
    combined: list[float | None] = []
    for row in rewards:
        terms = [w * r for w, r in zip(weights, row) if r is not None]
        combined.append(sum(terms) if terms else None)
    return combined


def group_slices(num: int, group_size: int) -> list[range]:
    return [range(start, start + group_size) for start in range(0, num, group_size)]


def outcome_advantages(
    reward: list[float | None], group_size: int, estimator: str, scale: str, eps: float
) -> list[float]:
    """One advantage per completion: (r_i - baseline_i) / divisor, 0 where there is no baseline.

    baseline: group mean ("grpo") or the mean of the other scorable members ("rloo").
    divisor: std_g + eps ("group"), std of every scorable reward of the batch + eps ("batch"), 1.
    Unscorable members are left out of all statistics and get 0; a group with fewer than two
    scorable members, or whose scorable rewards all tie, gets exactly 0.
    """
    scorable_all = [r for r in reward if r is not None]
    batch_std = std_bessel(scorable_all) if len(scorable_all) > 1 else 0.0
    advantages = [0.0] * len(reward)
    for group in group_slices(len(reward), group_size):
        members = [i for i in group if reward[i] is not None]
        values = [reward[i] for i in members]
        if len(values) < 2 or all_tie(values):
            continue
        divisor = {"group": std_bessel(values) + eps, "batch": batch_std + eps, "none": 1.0}[scale]
        for i in members:
            if estimator == "grpo":
                baseline = mean(values)
            else:
                baseline = mean([reward[j] for j in members if j != i])
            advantages[i] = (reward[i] - baseline) / divisor
    return advantages


def process_advantages(
    step_rewards: list[list[list[float]] | None], group_size: int, num_tokens: int, eps: float
) -> Matrix:
    """DeepSeekMath §4.1.3: normalize every step reward of a group by the group's mean and std
    (Bessel, + eps); the advantage of token t is the sum of the normalized rewards of the steps
    that end at or after t. `step_rewards[i]` is a list of [reward, end_token_index] or None."""
    advantages = [[0.0] * num_tokens for _ in step_rewards]
    for group in group_slices(len(step_rewards), group_size):
        values = [step[0] for i in group if step_rewards[i] for step in step_rewards[i]]
        if len(values) < 2 or all_tie(values):
            continue
        centre, divisor = mean(values), std_bessel(values) + eps
        for i in group:
            for reward, end in step_rewards[i] or []:
                normalized = (reward - centre) / divisor
                for t in range(min(int(end), num_tokens - 1) + 1):
                    advantages[i][t] += normalized
    return advantages


def clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def log_ratios(logprobs: Matrix, old_logprobs: Matrix, mask: Matrix, level: str,
               sg_logprobs: Matrix | None = None) -> Matrix:
    """Unclamped log importance ratio per token: logp - old ("token"), or for "sequence" (GSPO)
    the mean of logp - old over the completion's tokens, repeated at every token.

    "sequence_token" (GSPO-token): x_t = sg(x_seq) + logp_t - sg(logp_t), so ρ_t = exp(x_t) has
    the sequence ratio's value and dρ_t/dlogp_t = ρ_t = s_i, dρ_t/dlogp_u = 0 for u != t.
    `sg_logprobs` are the log-probs where the stop-gradient is taken (default: `logprobs`); a
    finite-difference check moves `logprobs` and keeps them to see the detached gradient."""
    diffs = [[lp - old for lp, old in zip(row, old_row)]
             for row, old_row in zip(logprobs, old_logprobs)]
    if level == "token":
        return diffs
    sg = logprobs if sg_logprobs is None or level == "sequence" else sg_logprobs
    result = []
    for row, old_row, lp_row, mask_row in zip(sg, old_logprobs, logprobs, mask):
        length = max(sum(mask_row), 1)
        seq = sum((lp - old) * m for lp, old, m in zip(row, old_row, mask_row)) / length
        if level == "sequence":
            result.append([seq] * len(row))
        else:
            result.append([seq + (lp - g) for lp, g in zip(lp_row, row)])
    return result


def surrogate(ratio: float, advantage: float, clip_low: float, clip_high: float,
              dual_clip: float | None) -> tuple[float, float]:
    """l = -min(ρA, clip(ρ, 1-ε_low, 1+ε_high) A), capped at -c·A when A < 0 (dual clip).

    Returns (l, dl/dρ). dl/dρ = -A when the unclipped term ρA is the minimum (inside the clip
    range both terms are equal and both carry slope A), else 0: the clipped term is constant in ρ
    outside the range, and the dual-clip cap -c·A is constant too.
    """
    unclipped = ratio * advantage
    clipped = clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantage
    if unclipped <= clipped:
        loss, slope = -unclipped, -advantage
    else:
        loss, slope = -clipped, 0.0
    if dual_clip is not None and advantage < 0 and loss > -dual_clip * advantage:
        loss, slope = -dual_clip * advantage, 0.0
    return loss, slope


def kl_estimator(logprob: float, ref_logprob: float, kind: str) -> tuple[float, float]:
    """With d = ref - logp, returns (k, dk/dlogp); dd/dlogp = -1.

    k1 = -d              → dk1/dlogp = 1
    k2 = d²/2            → dk2/dlogp = -d
    k3 = exp(d) - d - 1  → dk3/dlogp = -exp(d) + 1
    """
    d = ref_logprob - logprob
    if kind == "k1":
        return -d, 1.0
    if kind == "k2":
        return d * d / 2.0, -d
    if kind == "k3":
        return math.exp(d) - d - 1.0, 1.0 - math.exp(d)
    raise ValueError(f"unknown KL estimator {kind!r}")


def aggregation_weights(mask: Matrix, mode: str, num_sequences: int, num_tokens: int,
                        max_completion_length: int) -> Matrix:
    """w_{i,t} such that the aggregated loss is Σ_{i,t} w_{i,t} l_{i,t} (w is 0 off the mask).

    seq_mean_token_mean: w = m / (max(Σ_t m_i, 1) · num_sequences)
    token_mean:          w = m / max(num_tokens, 1)
    seq_sum_norm:        w = m / (num_sequences · max_completion_length)
    """
    weights = []
    for row in mask:
        if mode == "seq_mean_token_mean":
            scale = 1.0 / (max(sum(row), 1) * num_sequences)
        elif mode == "token_mean":
            scale = 1.0 / max(num_tokens, 1)
        elif mode == "seq_sum_norm":
            scale = 1.0 / (num_sequences * max_completion_length)
        else:
            raise ValueError(f"unknown aggregation {mode!r}")
        weights.append([m * scale for m in row])
    return weights


def correction_ratios(old_logprobs: Matrix, sampler_logprobs: Matrix, mask: Matrix,
                      level: str) -> Matrix:
    """Sampler-to-trainer ratio ρ = exp(clamp(x, ±20)) at every token, with x = old - sampler
    ("token") or x = Σ_t m_t (old_t - sampler_t) over the completion ("sequence")."""
    result = []
    for old_row, sampler_row, mask_row in zip(old_logprobs, sampler_logprobs, mask):
        diffs = [(o - s) if m else 0.0 for o, s, m in zip(old_row, sampler_row, mask_row)]
        if level == "sequence":
            total = 0.0
            for d in diffs:
                total += d
            diffs = [total] * len(diffs)
        result.append([math.exp(clamp(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)) for d in diffs])
    return result


def correction_weight(ratio: float, mode: str, threshold: float) -> float:
    """TIS: min(ρ, C); MIS: ρ if ρ <= C else 0; none: 1. The weight is a constant of the loss
    (it depends on old and sampler log-probs only), so it scales the surrogate's gradient too."""
    if mode == "tis":
        return min(ratio, threshold)
    if mode == "mis":
        return ratio if ratio <= threshold else 0.0
    return 1.0


def correction_weights(knobs: dict[str, Any], inputs: dict[str, Any]) -> Matrix:
    """(N, T) rollout-correction weights of the surrogate; all 1 for mode none."""
    mode = knobs.get("rollout_correction", "none")
    mask = inputs["completion_mask"]
    if mode == "none":
        return [[1.0] * len(row) for row in mask]
    ratios = correction_ratios(inputs["old_logprobs"], inputs["sampler_logprobs"], mask,
                               knobs.get("rollout_correction_level", "token"))
    threshold = knobs.get("rollout_correction_threshold", 2.0)
    return [[correction_weight(r, mode, threshold) for r in row] for row in ratios]


def correction_metrics(knobs: dict[str, Any], inputs: dict[str, Any]) -> dict[str, float]:
    """Means over the masked tokens of d = old - sampler: mismatch_kl = mean(-d) (k1 of
    KL(sampler ‖ trainer)), mismatch_k3 = mean(e^d - d - 1) with d clamped to ±20; the ratio's
    mean, max and min; is_clipped_frac = share of tokens whose weight is not ρ (ρ > C under tis
    or mis, none under mode none)."""
    mode = knobs.get("rollout_correction", "none")
    threshold = knobs.get("rollout_correction_threshold", 2.0)
    old, sampler = inputs["old_logprobs"], inputs["sampler_logprobs"]
    mask = inputs["completion_mask"]
    ratios = correction_ratios(old, sampler, mask, knobs.get("rollout_correction_level", "token"))
    k1, k3, rhos, changed = [], [], [], []
    for i, mask_row in enumerate(mask):
        for t, m in enumerate(mask_row):
            if not m:
                continue
            d = clamp(old[i][t] - sampler[i][t], -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            k1.append(sampler[i][t] - old[i][t])
            k3.append(math.exp(d) - d - 1.0)
            rhos.append(ratios[i][t])
            changed.append(1.0 if mode != "none" and ratios[i][t] > threshold else 0.0)
    return {"mismatch_kl": mean(k1), "mismatch_k3": mean(k3), "is_ratio_mean": mean(rhos),
            "is_ratio_max": max(rhos), "is_ratio_min": min(rhos), "is_clipped_frac": mean(changed)}


def token_advantages(advantages: list[float] | Matrix, num_tokens: int) -> Matrix:
    """Broadcast (N,) outcome advantages to (N, T); (N, T) process advantages pass through."""
    return [list(a) if isinstance(a, list) else [a] * num_tokens for a in advantages]


def loss_terms(case: dict[str, Any], advantages: list[float] | Matrix,
               sg_logprobs: Matrix | None = None) -> dict[str, Any]:
    """Per-token loss, aggregated loss and d loss / d logprobs for one case.

    Per token: c·p + β·KL on the mask (0 off it), with p the policy term of `knobs.loss` (clip by
    default), c the rollout-correction weight (1 without correction) and KL from `kl_estimator`;
    loss = Σ w·(c·p + β·KL) with w from `aggregation_weights`. dL/dlogp = (policy part from
    `family.policy_grad`, or `family.gmpo_terms`) + w·β·k'. `sg_logprobs`: where detached quantities
    (the CISPO weight, GSPO-token's sequence ratio) are evaluated; default the log-probs.
    """
    knobs, inputs = case["knobs"], case["inputs"]
    logprobs, old, mask = inputs["logprobs"], inputs["old_logprobs"], inputs["completion_mask"]
    sg = logprobs if sg_logprobs is None else sg_logprobs
    num_seq, num_tok = len(logprobs), len(logprobs[0])
    adv = token_advantages(advantages, num_tok)
    num_tokens = int(sum(sum(row) for row in mask))
    weights = aggregation_weights(mask, knobs["aggregation"], num_seq, num_tokens,
                                  knobs["max_completion_length"])
    beta = 0.0 if knobs.get("kl_in_reward") else knobs["beta"]  # in the reward instead
    correction = correction_weights(knobs, inputs)
    cov = knobs.get("cov_control", "none")
    if knobs.get("loss", "clip") == "gmpo":
        if cov != "none":
            raise ValueError("the reference has no cov_control for gmpo")
        diffs = log_ratios(logprobs, old, mask, "token")
        policy, policy_grad = family.gmpo_terms(diffs, advantages, mask, weights, correction, knobs)
    else:
        raw = log_ratios(logprobs, old, mask, knobs["ratio"], sg)
        raw_sg = log_ratios(sg, old, mask, knobs["ratio"])
        policy, slopes, direct = family.policy_terms(knobs, raw, raw_sg, adv, logprobs,
                                                     correction, surrogate)
        if cov != "none":  # chosen from the old log-probs, as at a step's start
            selected = family.cov_selection(adv, old, mask, knobs)
            policy, slopes, direct = family.cov_adjust(knobs, logprobs, old, selected,
                                                       correction, policy, slopes, direct)
        policy_grad = family.policy_grad(knobs["ratio"], raw, weights, slopes, direct, mask)
    per_token, grad = [], []
    for i in range(num_seq):
        kl = [kl_estimator(logprobs[i][t], inputs["ref_logprobs"][i][t], knobs["kl"])
              if beta != 0.0 else (0.0, 0.0) for t in range(num_tok)]
        per_token.append([(policy[i][t] + beta * kl[t][0]) if mask[i][t] else 0.0
                          for t in range(num_tok)])
        grad.append([policy_grad[i][t] + weights[i][t] * beta * kl[t][1]
                     for t in range(num_tok)])
    loss = sum(w * l for w_row, l_row in zip(weights, per_token) for w, l in zip(w_row, l_row))
    return {"per_token_loss": per_token, "loss": loss, "grad_logprobs": grad}


def advantages_for(case: dict[str, Any]) -> list[float] | Matrix:
    """The advantages of `rewards_advantages` (REINFORCE++'s KL-in-reward returns with
    knobs.kl_in_reward), plus with `teacher_logprobs` the distillation term
    teacher_coef·(teacher − old) on each loss token (reference_family.py)."""
    advantages, inputs, knobs = rewards_advantages(case), case["inputs"], case["knobs"]
    if knobs.get("kl_in_reward"):  # REINFORCE++: KL(old ‖ ref) per token in the returns
        kl = [[kl_estimator(o, r, knobs["kl"])[0] for o, r in zip(o_row, r_row)]
              for o_row, r_row in zip(inputs["old_logprobs"], inputs["ref_logprobs"])]
        reward = combine_rewards(inputs["rewards"], inputs["reward_weights"])
        advantages = family.kl_reward_advantages(reward, kl, inputs["completion_mask"],
                                                 knobs["beta"], knobs.get("adv_eps", 1e-6))
    if "teacher_logprobs" not in inputs:
        return advantages
    adv = token_advantages(advantages, len(inputs["old_logprobs"][0]))
    return family.distill_advantages(adv, inputs["teacher_logprobs"], inputs["old_logprobs"],
                                     inputs["completion_mask"],
                                     case["knobs"].get("teacher_coef", 1.0))


def rewards_advantages(case: dict[str, Any]) -> list[float] | Matrix:
    """Outcome advantages (N,) from `rewards`, or process advantages (N, T) from `step_rewards`.
    Estimators reinforce_pp and gdpo and the scale whiten come from reference_family.py; none is
    0 for every completion."""
    knobs, inputs = case["knobs"], case["inputs"]
    eps = knobs.get("adv_eps", 1e-6)
    if "step_rewards" in inputs:
        num_tokens = len(inputs["old_logprobs"][0])
        return process_advantages(inputs["step_rewards"], inputs["group_size"], num_tokens, eps)
    estimator, scale = knobs["estimator"], knobs["scale"]
    if estimator == "none":
        return [0.0] * len(inputs["rewards"])
    if estimator == "gdpo":
        return family.gdpo_advantages(inputs["rewards"], inputs["reward_weights"],
                                      inputs["group_size"], scale, eps)
    reward = combine_rewards(inputs["rewards"], inputs["reward_weights"])
    if estimator == "reinforce_pp" or scale == "whiten":
        return family.family_advantages(reward, inputs["group_size"], estimator, scale, eps)
    return outcome_advantages(reward, inputs["group_size"], estimator, scale, eps)


def kept_set(z: list[float], top_k: int, top_p: float) -> list[bool]:
    """The sampler's kept tokens at one position of temperature-scaled logits z: the top k, then
    the shortest descending prefix of them whose renormalised mass reaches top_p (a token is
    dropped when the mass strictly before it already reaches top_p); every token whose logit
    reaches the smallest kept one stays (ties at the threshold are kept together)."""
    ranked = sorted(z, reverse=True)
    if 0 < top_k < len(z):
        ranked = ranked[:top_k]
    total = sum(math.exp(v) for v in ranked)
    threshold, before = ranked[0], 0.0
    for v in ranked:
        if before >= top_p:
            break
        threshold = v
        before += math.exp(v) / total
    return [v >= threshold for v in z]


def replayed_logprob(logits: list[float], label: int, knobs: dict[str, Any]
                     ) -> tuple[float, list[float]]:
    """log p(label) over the sampler's kept set (sampling_support replay, the default) or the
    whole vocabulary (full), and d log p / d logits = (onehot − p) / temperature, with p the
    renormalised probabilities (0 outside the kept set). The label always stays kept."""
    temperature = knobs.get("temperature", 1.0)
    z = [v / temperature for v in logits]
    kept = [True] * len(z)
    if knobs.get("sampling_support", "replay") == "replay":
        kept = kept_set(z, knobs.get("top_k", 0), knobs.get("top_p", 1.0))
        kept[label] = True
    norm = math.log(sum(math.exp(v) for v, k in zip(z, kept) if k))
    probs = [math.exp(v - norm) if k else 0.0 for v, k in zip(z, kept)]
    grad = [((1.0 if j == label else 0.0) - p) / temperature for j, p in enumerate(probs)]
    return z[label] - norm, grad


def with_logprobs(case: dict[str, Any]) -> tuple[dict[str, Any], list | None]:
    """The case with inputs.logprobs filled from inputs.logits when it gives logits, and the
    (N, T, V) derivatives of each log-prob by its logits (None for a log-probs case)."""
    inputs = case["inputs"]
    if "logits" not in inputs:
        return case, None
    rows = [[replayed_logprob(z, y, case["knobs"]) for z, y in zip(zs, ys)]
            for zs, ys in zip(inputs["logits"], inputs["completion_ids"])]
    filled = {**case, "inputs": {**inputs, "logprobs": [[lp for lp, _ in r] for r in rows]}}
    return filled, [[d for _, d in r] for r in rows]


def expected(case: dict[str, Any]) -> dict[str, Any]:
    """Everything a vector pins: advantages, per_token_loss, loss, grad_logprobs, and the
    mismatch metrics when the inputs carry sampler_logprobs; with logits, also the log-probs and
    d loss / d logits = d loss / d logprobs · d logprobs / d logits (chain rule, per position)."""
    case, dlogits = with_logprobs(case)
    advantages = advantages_for(case)
    result = {"advantages": advantages, **loss_terms(case, advantages)}
    if "sampler_logprobs" in case["inputs"]:
        result["metrics"] = correction_metrics(case["knobs"], case["inputs"])
    if dlogits is not None:
        result["logprobs"] = case["inputs"]["logprobs"]
        result["grad_logits"] = [[[g * d for d in dz] for g, dz in zip(g_row, d_row)]
                                 for g_row, d_row in zip(result["grad_logprobs"], dlogits)]
    return result

"""Write the conformance vectors in `vectors/` from the case table below, using only reference.py.

Run from the repository root: `python tests/conformance/make_vectors.py [NAME ...]` (names given:
only those cases are written). Inputs are drawn from a seeded generator and rounded to 4
decimals; expected numbers come from the naive reference. Each case states which regimes it must
exercise (clip sides, dual clip, clamp, rollout-correction weights below and above C); generation
fails if a case does not hit them, if any ratio sits within 1e-6 of a kink where the derivative
jumps, or if a rollout-correction ratio sits within 1e-4 (relative) of its threshold C, where
float32 and float64 could decide differently. The shared example vectors are copied verbatim after
checking the reference reproduces them.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reference  # noqa: E402

OUT = HERE / "vectors"
SHARED = HERE.parents[2] / "shared" / "conformance"
KINK_MARGIN = 1e-6
THRESHOLD_MARGIN = 1e-4

DEFAULT_KNOBS = {
    "estimator": "grpo", "scale": "group", "adv_eps": 1e-6, "ratio": "token",
    "clip_low": 0.2, "clip_high": 0.2, "dual_clip": None, "kl": "k3", "beta": 0.0,
    "aggregation": "seq_mean_token_mean",
}

UNEVEN_MASK_8x5 = [
    [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0],
]
FULL_4x4 = [[1, 1, 1, 1]] * 4
FULL_8x4 = [[1, 1, 1, 1]] * 8


def outcome(rewards: list, weights: list | None = None) -> dict[str, Any]:
    """Inputs fields for outcome rewards; plain numbers become one reward function of weight 1."""
    rows = [r if isinstance(r, list) else [r] for r in rewards]
    return {"rewards": rows, "reward_weights": weights or [1.0] * len(rows[0])}


AGG_INPUTS = {"group_size": 4, "mask": UNEVEN_MASK_8x5, "shift": 0.3, "seed": 11,
              **outcome([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 0.0, 0.25])}


def correction(mode: str, level: str, threshold: float) -> dict[str, Any]:
    """The rollout-correction knobs of a case (the other cases leave them out: mode none)."""
    return {"rollout_correction": mode, "rollout_correction_level": level,
            "rollout_correction_threshold": threshold}


CORRECTION_INPUTS = {"group_size": 4, "mask": UNEVEN_MASK_8x5, "shift": 0.3,
                     **outcome([1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.25])}

CASES: list[dict[str, Any]] = [
    {"name": "adv_group_scale_one_correct_of_eight",
     "description": "GRPO group scale, one group of 8 with one correct answer: advantages "
                    "0.875/(0.3536+eps) and -0.125/(0.3536+eps); small ratios, no KL.",
     "inputs": {"group_size": 8, "mask": FULL_8x4, "shift": 0.1, "seed": 1,
                **outcome([1.0, 0, 0, 0, 0, 0, 0, 0])}},
    {"name": "adv_batch_scale_two_groups",
     "description": "scale=batch: each group is centred on its own mean and divided by the "
                    "Bessel std of all 8 rewards of the batch plus eps.",
     "knobs": {"scale": "batch"},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.1, "seed": 2,
                **outcome([1.0, 0.0, 0.0, 0.0, 0.9, 0.8, 0.7, 0.4])}},
    {"name": "adv_none_scale_dr_grpo",
     "description": "Dr. GRPO: scale=none (A = r - group mean), seq_sum_norm aggregation with "
                    "max_completion_length 5 and uneven lengths, no KL.",
     "knobs": {"scale": "none", "aggregation": "seq_sum_norm"},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "shift": 0.15, "seed": 3,
                **outcome([1.0, 0.0, 0.0, 0.5, 0.2, 0.2, 0.9, 0.0])}},
    {"name": "adv_rloo_no_scale",
     "description": "RLOO baseline (mean of the other members of the group), no divisor: "
                    "A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g).",
     "knobs": {"estimator": "rloo", "scale": "none"},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.1, "seed": 4,
                **outcome([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5])}},
    {"name": "adv_rloo_group_scale_with_unscorable",
     "description": "RLOO baseline divided by the group std + eps; completion 1 is unscorable, so "
                    "the leave-one-out means of its group run over the other two members.",
     "knobs": {"estimator": "rloo", "scale": "group"},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.1, "seed": 5,
                **outcome([0.3, None, 1.0, 0.0, 0.2, 0.6, 0.6, 0.0])}},
    {"name": "adv_tied_groups_exact_zero",
     "description": "Groups whose rewards all tie get advantage exactly 0, including 0.1 x 3 "
                    "whose floating-point mean is not exactly 0.1; the KL term alone drives the "
                    "gradient there.",
     "knobs": {"beta": 0.04},
     "inputs": {"group_size": 3, "mask": [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1],
                                          [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]],
                "shift": 0.1, "seed": 6, **outcome([0.1, 0.1, 0.1, 1.0, 0.0, 0.5])}},
    {"name": "adv_unscorable_members",
     "description": "Two reward functions with None terms: a completion whose terms are all None "
                    "gets 0 and leaves its group's statistics; the second group has one scorable "
                    "member only, so no baseline and all advantages 0.",
     "knobs": {"beta": 0.04},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.1, "seed": 7,
                **outcome([[1.0, None], [0.0, 1.0], [None, None], [0.0, None],
                           [None, None], [1.0, 0.5], [None, None], [None, None]], [1.0, 0.5])}},
    {"name": "adv_group_size_one",
     "description": "group_size 1: every group lacks a baseline, so all advantages are 0; the loss "
                    "is beta times the k3 KL only.",
     "knobs": {"beta": 0.1},
     "inputs": {"group_size": 1, "mask": [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]],
                "shift": 0.1, "seed": 8, **outcome([1.0, 0.0, 0.5, 1.0])}},
    {"name": "agg_seq_mean_token_mean_uneven",
     "description": "seq_mean_token_mean over uneven lengths with an empty completion, which "
                    "still counts as a sequence; beta 0.04 k3.",
     "knobs": {"beta": 0.04},
     "inputs": AGG_INPUTS},
    {"name": "agg_token_mean_uneven",
     "description": "token_mean over the same batch: every unmasked token weighs 1/22.",
     "knobs": {"beta": 0.04, "aggregation": "token_mean"},
     "inputs": AGG_INPUTS},
    {"name": "agg_seq_sum_norm_uneven",
     "description": "seq_sum_norm over the same batch: every unmasked token weighs 1/(8 x 6) with "
                    "max_completion_length 6, longer than the padded width 5.",
     "knobs": {"beta": 0.04, "aggregation": "seq_sum_norm", "max_completion_length": 6},
     "inputs": AGG_INPUTS},
    {"name": "clip_both_sides_pos_and_neg_advantages",
     "description": "Log-prob shifts up to 0.7 with clip 0.2 / 0.2: clipped and unclipped tokens "
                    "above 1+eps and below 1-eps for both positive and negative advantages.",
     "requires": ["clipped_pos", "unclipped_pos_low", "clipped_neg", "unclipped_neg_high"],
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.7, "seed": 12,
                **outcome([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])}},
    {"name": "dual_clip_caps_negative_advantages",
     "description": "Dual clip c = 3: for A < 0 and ratios above 3 the per-token loss is capped at "
                    "-3A and passes no gradient.",
     "knobs": {"dual_clip": 3.0},
     "requires": ["dual_clip", "unclipped_neg_high"],
     "inputs": {"group_size": 4, "mask": FULL_4x4, "shift": 1.6, "seed": 13,
                **outcome([1.0, 0.0, 0.0, 0.0])}},
    {"name": "kl_k1", "description": "k1 = logp - ref with beta 0.1; dk1/dlogp = 1.",
     "knobs": {"beta": 0.1, "kl": "k1"},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5[:4], "shift": 0.1, "seed": 14,
                **outcome([1.0, 0.0, 0.5, 0.0])}},
    {"name": "kl_k2",
     "description": "k2 = (ref - logp)^2 / 2 with beta 0.1; dk2/dlogp = logp - ref.",
     "knobs": {"beta": 0.1, "kl": "k2"},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5[:4], "shift": 0.1, "seed": 14,
                **outcome([1.0, 0.0, 0.5, 0.0])}},
    {"name": "kl_k3", "description": "k3 = exp(ref - logp) - (ref - logp) - 1 with beta 0.1; "
                                     "dk3/dlogp = 1 - exp(ref - logp).",
     "knobs": {"beta": 0.1, "kl": "k3"},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5[:4], "shift": 0.1, "seed": 14,
                **outcome([1.0, 0.0, 0.5, 0.0])}},
    {"name": "gspo_sequence_ratio",
     "description": "GSPO: s_i = exp(mean_t(logp - old)) shared by every token of a completion, "
                    "clip 3e-4 / 4e-4; some sequences inside the band, some clipped; the gradient "
                    "flows through the mean, 1/len to each token.",
     "knobs": {"ratio": "sequence", "clip_low": 3e-4, "clip_high": 4e-4},
     "requires": ["inside", "clipped_pos", "clipped_neg", "unclipped_pos_low",
                  "unclipped_neg_high"],
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "shift": 0.002, "seed": 16,
                **outcome([1.0, 0.0, 0.0, 1.0, 0.0, 0.5, 1.0, 0.0])}},
    {"name": "gspo_sequence_ratio_with_kl",
     "description": "Sequence-level ratio with clip 0.2 / 0.2, beta 0.05 k3 and token_mean: "
                    "the surrogate gradient is spread evenly over a completion's tokens while "
                    "the KL gradient stays per token.",
     "knobs": {"ratio": "sequence", "beta": 0.05, "aggregation": "token_mean"},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "shift": 0.3, "seed": 16,
                **outcome([0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.0])}},
    {"name": "token_log_ratio_clamp",
     "description": "Token log-ratios beyond +-20 are clamped before exp: with A = -5e-9 (reward "
                    "weight 1e-8, scale none) the token with log-ratio 20.5 costs exp(20)|A| = "
                    "2.4258, not exp(20.5)|A|, and passes no gradient.",
     "knobs": {"scale": "none"},
     "requires": ["clamp"],
     "inputs": {"group_size": 2, "mask": [[1, 1, 0], [1, 1, 1]], "shift": 0.1, "seed": 17,
                "old_overrides": {(1, 1): 20.5}, **outcome([1.0, 0.0], [1e-8])}},
    {"name": "process_supervision_steps",
     "description": "Step rewards normalized by the mean and std of all step rewards of the group; "
                    "a token's advantage is the sum over steps ending at or after it. Completion "
                    "4 is unscorable (null) and gets 0 at every token.",
     "knobs": {"beta": 0.04},
     "inputs": {"group_size": 3, "mask": [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0],
                                          [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
                "shift": 0.15, "seed": 18,
                "step_rewards": [[[0.0, 1], [1.0, 4]], [[1.0, 2], [0.5, 3]], [[0.0, 0], [0.0, 2]],
                                 [[1.0, 1], [0.0, 3], [1.0, 4]], None, [[0.5, 3]]]}},
    {"name": "process_supervision_tied_group_sequence_ratio",
     "description": "Process supervision with the sequence-level ratio: the first group's step "
                    "rewards all tie (advantage 0 at every token), the second is normalized.",
     "knobs": {"ratio": "sequence"},
     "inputs": {"group_size": 2, "mask": [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]],
                "shift": 0.1, "seed": 19,
                "step_rewards": [[[1.0, 1], [1.0, 3]], [[1.0, 2]],
                                 [[0.2, 0], [0.9, 3]], [[0.4, 1]]]}},
    {"name": "rollout_tis_token",
     "description": "Truncated IS per token (TIS), C = 2: the surrogate of each token is weighted "
                    "by min(exp(old - sampler), 2), detached; the beta 0.04 k3 KL term is not "
                    "weighted; some tokens are truncated at 2.",
     "knobs": {"beta": 0.04, **correction("tis", "token", 2.0)},
     "requires": ["corr_kept", "corr_over"],
     "inputs": {**CORRECTION_INPUTS, "seed": 21, "sampler_shift": 1.0}},
    {"name": "rollout_tis_sequence",
     "description": "Truncated IS per sequence, C = 2.5: every token of a completion gets "
                    "min(exp(sum_t (old - sampler)), 2.5); token_mean aggregation; the "
                    "normalizer is unchanged.",
     "knobs": {"aggregation": "token_mean", **correction("tis", "sequence", 2.5)},
     "requires": ["corr_kept", "corr_over"],
     "inputs": {**CORRECTION_INPUTS, "seed": 32, "sampler_shift": 0.7}},
    {"name": "rollout_mis_token",
     "description": "Masked IS per token (MIS), C = 1.5: tokens with exp(old - sampler) > 1.5 "
                    "lose their surrogate (weight 0) and keep only the beta 0.04 KL term and "
                    "their place in the normalizer; the others are weighted by the ratio.",
     "knobs": {"beta": 0.04, **correction("mis", "token", 1.5)},
     "requires": ["corr_kept", "corr_over"],
     "inputs": {**CORRECTION_INPUTS, "seed": 23, "sampler_shift": 0.8}},
    {"name": "rollout_mis_sequence",
     "description": "Masked IS per sequence, C = 2, with the GSPO sequence ratio: a completion "
                    "whose summed log-ratio old - sampler exceeds log 2 gets weight 0 at every "
                    "token; the others are weighted by their sequence ratio.",
     "knobs": {"ratio": "sequence", **correction("mis", "sequence", 2.0)},
     "requires": ["corr_kept", "corr_over"],
     "inputs": {**CORRECTION_INPUTS, "seed": 24, "sampler_shift": 0.5}},
    {"name": "rollout_none_with_sampler_logprobs",
     "description": "rollout_correction none with sampler log-probs: the loss, per-token losses "
                    "and gradient are those of agg_seq_mean_token_mean_uneven (same inputs); "
                    "only the mismatch metrics are added.",
     "knobs": {"beta": 0.04, **correction("none", "token", 2.0)},
     "inputs": {**AGG_INPUTS, "sampler_shift": 0.5}},
    # --- the policy-loss and estimator family: cispo, sapo, gmpo, sequence_token, reinforce_pp,
    # --- whiten, gdpo (knobs a case leaves out keep the defaults above: loss clip)
    {"name": "loss_cispo_clamped_both_sides",
     "description": "CISPO p = -sg(clamp(rho, 0.8, 1.28))*A*logp with token_mean: token weights "
                    "clamped above 1.28 and below 0.8 for positive and negative advantages; the "
                    "gradient -clamp(rho)*A/num_tokens flows at every token, clamped or not.",
     "knobs": {"loss": "cispo", "clip_low": 0.2, "clip_high": 0.28, "aggregation": "token_mean"},
     "requires": ["cispo_above_pos", "cispo_below_pos", "cispo_above_neg", "cispo_below_neg",
                  "cispo_inside_pos", "cispo_inside_neg"],
     "inputs": {"group_size": 4, "mask": FULL_8x4, "old_max": -0.01, "shift": 0.7, "seed": 41,
                **outcome([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])}},
    {"name": "loss_cispo_preset_cap5_negative_advantages",
     "description": "The cispo preset's band: clip_low 1.0 (lower bound 0, no lower clamp) and "
                    "clip_high 4.0 (weight cap 5), token_mean over uneven lengths; one correct "
                    "answer of four per group, so most advantages are negative, and some of their "
                    "weights are capped at 5.",
     "knobs": {"loss": "cispo", "clip_low": 1.0, "clip_high": 4.0, "aggregation": "token_mean"},
     "requires": ["cispo_above_neg", "cispo_inside_neg", "cispo_inside_pos"],
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "old_max": -0.01, "shift": 2.0,
                "seed": 44,
                **outcome([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])}},
    {"name": "loss_cispo_step_rewards_kl",
     "description": "CISPO with per-token advantages from step rewards (clip 0.2 / 0.28), beta "
                    "0.04 k3, seq_mean_token_mean: each token's weight clamp(rho) multiplies its "
                    "own advantage; the KL term is added as for the clipped surrogate.",
     "knobs": {"loss": "cispo", "clip_low": 0.2, "clip_high": 0.28, "beta": 0.04},
     "requires": ["cispo_above_pos", "cispo_below_neg", "cispo_inside_pos", "cispo_inside_neg"],
     "inputs": {"group_size": 3, "mask": [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0],
                                          [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
                "old_max": -0.01, "shift": 0.5, "seed": 43,
                "step_rewards": [[[0.0, 1], [1.0, 4]], [[1.0, 2], [0.5, 3]], [[0.0, 0], [0.0, 2]],
                                 [[1.0, 1], [0.0, 3], [1.0, 4]], None, [[0.5, 3]]]}},
    {"name": "loss_sapo_preset_pos_neg",
     "description": "SAPO p = -sigmoid(tau (rho - 1)) 4/tau A with the preset's tau_pos 1.0 "
                    "(A > 0) and tau_neg 1.05 (A < 0), token_mean; ratios above and below 1 for "
                    "both signs; dp/dlogp = -A 4 sigma (1 - sigma) rho.",
     "knobs": {"loss": "sapo", "sapo_tau_pos": 1.0, "sapo_tau_neg": 1.05,
               "aggregation": "token_mean"},
     "requires": ["sapo_above_pos", "sapo_below_pos", "sapo_above_neg", "sapo_below_neg"],
     "inputs": {"group_size": 4, "mask": FULL_8x4, "old_max": -0.01, "shift": 0.6, "seed": 44,
                **outcome([1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.25])}},
    {"name": "loss_sapo_far_taus_kl_uneven",
     "description": "SAPO with tau_pos 0.5 and tau_neg 3.0 (the negative side's gate narrower), "
                    "beta 0.04 k3, seq_mean_token_mean over uneven lengths with an empty "
                    "completion.",
     "knobs": {"loss": "sapo", "sapo_tau_pos": 0.5, "sapo_tau_neg": 3.0, "beta": 0.04},
     "requires": ["sapo_above_pos", "sapo_below_pos", "sapo_above_neg", "sapo_below_neg"],
     "inputs": {**AGG_INPUTS, "old_max": -0.01, "shift": 0.8, "seed": 45}},
    {"name": "loss_gmpo_preset_clip_both_sides_uneven",
     "description": "GMPO g_i = exp(mean_t clip(log rho_t)) with the preset's log-space band 0.4 / "
                    "0.4: log-ratios above 0.4 in A > 0 sequences and below -0.4 in A < 0 "
                    "sequences are clipped and pass no gradient; seq_mean_token_mean over uneven "
                    "lengths (an empty completion too): each sequence's -A g counts once.",
     "knobs": {"loss": "gmpo", "clip_low": 0.4, "clip_high": 0.4},
     "requires": ["gmpo_clipped_pos", "gmpo_clipped_neg", "gmpo_inside_pos", "gmpo_inside_neg"],
     "inputs": {**AGG_INPUTS, "old_max": -0.01, "shift": 0.8, "seed": 46}},
    {"name": "loss_gmpo_token_mean_kl",
     "description": "GMPO with clip_low 0.2 / clip_high 0.3 (log space), token_mean and beta 0.04 "
                    "k3: the sequence term -A g_i sits on each of its tokens, so a sequence weighs "
                    "its length over the batch's token count.",
     "knobs": {"loss": "gmpo", "clip_low": 0.2, "clip_high": 0.3, "beta": 0.04,
               "aggregation": "token_mean"},
     "requires": ["gmpo_clipped_pos", "gmpo_clipped_neg", "gmpo_inside_pos", "gmpo_inside_neg"],
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "old_max": -0.01, "shift": 0.5,
                "seed": 48,
                **outcome([0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.0])}},
    {"name": "loss_gmpo_tis_token",
     "description": "GMPO under truncated IS per token (C = 2): each token's copy of the "
                    "sequence term -A g_i is weighted by min(exp(old - sampler), 2), so the "
                    "gradient of sequence i is (sum_t w_t c_t) (-A_i) dg_i/dlogp.",
     "knobs": {"loss": "gmpo", "clip_low": 0.4, "clip_high": 0.4,
               **correction("tis", "token", 2.0)},
     "requires": ["gmpo_clipped_pos", "gmpo_inside_neg", "corr_kept", "corr_over"],
     "inputs": {**CORRECTION_INPUTS, "old_max": -0.01, "shift": 0.6, "seed": 48,
                "sampler_shift": 1.0}},
    {"name": "ratio_sequence_token_step_rewards_clip",
     "description": "GSPO-token: every token carries the sequence ratio s_i (clip 3e-4 / 4e-4) but "
                    "its own advantage from step rewards, so one sequence above the band is "
                    "clipped at its A > 0 tokens and unclipped at its A < 0 tokens; "
                    "d rho_t / d logp_t = s_i, d rho_t / d logp_u = 0.",
     "knobs": {"ratio": "sequence_token", "clip_low": 3e-4, "clip_high": 4e-4},
     "requires": ["inside", "clipped_pos", "clipped_neg", "unclipped_pos_low",
                  "unclipped_neg_high"],
     "inputs": {"group_size": 3, "mask": [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0],
                                          [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
                "shift": 0.002, "seed": 49,
                "step_rewards": [[[0.0, 1], [1.0, 4]], [[1.0, 2], [0.5, 3]], [[0.0, 0], [0.0, 2]],
                                 [[1.0, 1], [0.0, 3], [1.0, 4]], [[0.0, 1]], [[0.5, 3]]]}},
    {"name": "ratio_sequence_token_step_rewards_kl",
     "description": "GSPO-token with step rewards, clip 0.2 / 0.2, beta 0.04 k3: the surrogate's "
                    "gradient at a token is w A_t s_i (not spread over the sequence as GSPO's), "
                    "the KL gradient stays per token.",
     "knobs": {"ratio": "sequence_token", "beta": 0.04},
     "requires": ["inside", "clipped_pos", "unclipped_neg_high"],
     "inputs": {"group_size": 2, "mask": [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]],
                "shift": 0.3, "seed": 52,
                "step_rewards": [[[1.0, 1], [0.0, 3]], [[0.0, 0], [1.0, 2]],
                                 [[0.2, 0], [0.9, 3]], [[0.4, 1]]]}},
    {"name": "ratio_sequence_token_outcome_equals_gspo",
     "description": "GSPO-token on the inputs of gspo_sequence_ratio_with_kl (outcome advantages, "
                    "clip 0.2, beta 0.05 k3, token_mean): with one advantage per sequence "
                    "GSPO-token's loss and gradient equal GSPO's, so every number is that file's.",
     "knobs": {"ratio": "sequence_token", "beta": 0.05, "aggregation": "token_mean"},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "shift": 0.3, "seed": 16,
                **outcome([0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.0])}},
    {"name": "adv_reinforce_pp_tied_group_batch_scale",
     "description": "REINFORCE++ (the reinforce_pp preset): baseline the mean of all 8 rewards of "
                    "the batch, divided by their Bessel std + eps; the tied group 1, 1, 1, 1 is "
                    "not zeroed, it sits above the batch mean.",
     "knobs": {"estimator": "reinforce_pp", "scale": "batch"},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.3, "seed": 51,
                **outcome([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5])}},
    {"name": "adv_reinforce_pp_unscorable",
     "description": "REINFORCE++ with unscorable members, groups of 2, scale batch: the unscorable "
                    "completions get 0 and leave the batch mean and std; a group with one "
                    "scorable member still gets r - batch mean (no tie rule).",
     "knobs": {"estimator": "reinforce_pp", "scale": "batch", "beta": 0.04},
     "inputs": {"group_size": 2, "mask": UNEVEN_MASK_8x5, "shift": 0.3, "seed": 52,
                **outcome([1.0, None, 0.0, 0.5, 0.25, 1.0, None, None])}},
    {"name": "adv_whiten_grpo_tied_and_unscorable",
     "description": "REINFORCE++-baseline (estimator grpo, scale whiten): c = r - group mean, then "
                    "(c - mean_batch c) / (std_batch c + eps) over the 7 scorable completions, the "
                    "tied group's c = 0 among them; the tied group is then set to exactly 0.",
     "knobs": {"estimator": "grpo", "scale": "whiten"},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.3, "seed": 53,
                **outcome([1.0, 0.0, 0.25, None, 1.0, 1.0, 1.0, 1.0])}},
    {"name": "adv_whiten_rloo",
     "description": "RLOO baseline whitened over the batch: c = r - mean of the other members, "
                    "then (c - mean_batch c) / (std_batch c + eps); beta 0.04 k3.",
     "knobs": {"estimator": "rloo", "scale": "whiten", "beta": 0.04},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.3, "seed": 54,
                **outcome([1.0, 0.0, 0.0, 0.0, 0.2, 0.9, 0.4, 0.4])}},
    {"name": "adv_gdpo_distinct_combinations",
     "description": "GDPO with two reward functions of different scales (0/1 and 0..4, weights 1 "
                    "and 0.25): in group 1 the rewards (1, 0) and (0, 4) both combine to 1, so "
                    "GRPO gives completions 0, 1 and 2 the same advantage 0.5; GDPO normalizes "
                    "each function in its group first and tells them apart.",
     "knobs": {"estimator": "gdpo", "scale": "group"},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.3, "seed": 55,
                **outcome([[1.0, 0.0], [0.0, 4.0], [1.0, 0.0], [0.0, 0.0],
                           [1.0, 2.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], [1.0, 0.25])}},
    {"name": "adv_gdpo_null_entries",
     "description": "GDPO with null entries in the second reward function: its group statistics "
                    "run over the scored entries only; in group 2 it scores one completion, so "
                    "its term there is 0; completion 6 is unscorable (both null) and gets 0.",
     "knobs": {"estimator": "gdpo", "scale": "group", "beta": 0.04},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.3, "seed": 56,
                **outcome([[1.0, None], [0.0, 1.0], [1.0, 0.0], [0.0, None],
                           [1.0, None], [0.0, None], [None, None], [1.0, 0.5]], [1.0, 0.5])}},
    {"name": "adv_gdpo_tied_combined_batch_scale",
     "description": "GDPO with scale batch (each function divided by its batch std): group 1's "
                    "rewards (1, 0), (0, 1), (1, 0), (0, 1) tie in the combined reward, so its "
                    "advantages are exactly 0, though its per-function sums s_i are not 0 and "
                    "take part in the batch mean and std of s.",
     "knobs": {"estimator": "gdpo", "scale": "batch"},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "shift": 0.3, "seed": 57,
                **outcome([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0],
                           [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [1.0, 1.0])}},
    # --- pg (no clip), Clip-Cov / KL-Cov (tokens chosen from the old log-probs) and on-policy
    # --- distillation (teacher_logprobs; the student's are the old log-probs)
    {"name": "loss_pg_unclipped_both_signs",
     "description": "pg p = -rho*A with no clip, token_mean: ratios far outside 0.8..1.2 for "
                    "both signs keep the gradient -rho*A/num_tokens that the clip would cut.",
     "knobs": {"loss": "pg", "aggregation": "token_mean"},
     "requires": ["pg_above_pos", "pg_below_pos", "pg_above_neg", "pg_below_neg"],
     "inputs": {"group_size": 4, "mask": FULL_8x4, "old_max": -0.01, "shift": 0.7, "seed": 61,
                **outcome([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5, 0.0])}},
    {"name": "loss_pg_uneven_kl",
     "description": "pg with beta 0.04 k3 and seq_mean_token_mean over uneven lengths (an empty "
                    "completion too).",
     "knobs": {"loss": "pg", "beta": 0.04},
     "requires": ["pg_above_pos", "pg_below_neg"],
     "inputs": {**AGG_INPUTS, "old_max": -0.01, "shift": 0.5, "seed": 62}},
    {"name": "cov_kl_cov_pg_top_tokens",
     "description": "KL-Cov on pg, token_mean, cov_ratio 0.1: n = floor(0.1*32) = 3 tokens of "
                    "largest c = (A - mean A)(old - mean old) over the 32 tokens gain "
                    "1.0*|logp - old|, with gradient sign(logp - old).",
     "knobs": {"loss": "pg", "aggregation": "token_mean", "cov_control": "kl_cov",
               "cov_ratio": 0.1, "kl_cov_coef": 1.0},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "old_max": -0.01, "shift": 0.5, "seed": 63,
                **outcome([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5, 0.0])}},
    {"name": "cov_kl_cov_clip_uneven_kl",
     "description": "KL-Cov on the clipped surrogate (0.2 / 0.28), beta 0.04 k3, "
                    "seq_mean_token_mean over uneven lengths, cov_ratio 0.2 and coef 0.5: the "
                    "covariance runs over the unmasked tokens only.",
     "knobs": {"clip_high": 0.28, "beta": 0.04, "cov_control": "kl_cov", "cov_ratio": 0.2,
               "kl_cov_coef": 0.5},
     "inputs": {**AGG_INPUTS, "old_max": -0.01, "shift": 0.4, "seed": 64}},
    {"name": "cov_clip_cov_band",
     "description": "Clip-Cov on the clipped surrogate, token_mean: every token with covariance "
                    "in (0.33, 0.7) (7 of them, fewer than n = floor(0.25*32) = 8; one above the "
                    "band) has its policy term and gradient set to 0; it still counts in the "
                    "token mean.",
     "knobs": {"aggregation": "token_mean", "cov_control": "clip_cov", "cov_ratio": 0.25,
               "clip_cov_low": 0.33, "clip_cov_high": 0.7},
     "inputs": {"group_size": 4, "mask": FULL_8x4, "old_max": -0.01, "shift": 0.3, "seed": 65,
                **outcome([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])}},
    {"name": "cov_clip_cov_step_rewards_sequence",
     "description": "Clip-Cov with per-token advantages from step rewards and the GSPO sequence "
                    "ratio (clip 3e-4 / 4e-4): a zeroed token also leaves its sequence's shared "
                    "ratio gradient; band (0.05, 0.6) holds 6 of the 23 tokens (one above it), "
                    "n = floor(0.3*23) = 6.",
     "knobs": {"ratio": "sequence", "clip_low": 3e-4, "clip_high": 4e-4,
               "cov_control": "clip_cov", "cov_ratio": 0.3, "clip_cov_low": 0.05,
               "clip_cov_high": 0.6},
     "inputs": {"group_size": 3, "mask": [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0],
                                          [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
                "old_max": -0.01, "shift": 0.0005, "seed": 66,
                "step_rewards": [[[0.0, 1], [1.0, 4]], [[1.0, 2], [0.5, 3]], [[0.0, 0], [0.0, 2]],
                                 [[1.0, 1], [0.0, 3], [1.0, 4]], None, [[0.5, 3]]]}},
    {"name": "adv_reinforce_pp_kl_in_reward",
     "description": "REINFORCE++ with a k1 KL folded into the reward, beta 0.05: G_t = r - "
                    "beta * sum_{s>=t} (old_s - ref_s) over the loss tokens, whitened over all "
                    "tokens of the batch (Bessel std); the loss has no KL term.",
     "knobs": {"estimator": "reinforce_pp", "scale": "batch", "kl_in_reward": True,
               "beta": 0.05, "kl": "k1", "aggregation": "token_mean"},
     "inputs": {**AGG_INPUTS, "old_max": -0.01, "shift": 0.3, "seed": 69}},
    {"name": "adv_reinforce_pp_kl_in_reward_k3_unscorable",
     "description": "REINFORCE++ KL-in-reward with k3 and beta 0.1, a tied group (kept: no "
                    "group baseline) and an unscorable completion (advantage 0, out of the "
                    "statistics), seq_mean_token_mean.",
     "knobs": {"estimator": "reinforce_pp", "scale": "batch", "kl_in_reward": True,
               "beta": 0.1, "kl": "k3"},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "old_max": -0.01, "shift": 0.3,
                "seed": 70,
                **outcome([[1.0], [0.0], [None], [1.0], [0.5], [0.5], [0.5], [0.5]], [1.0])}},
    {"name": "distill_pure_reverse_kl",
     "description": "On-policy distillation alone (estimator none, teacher_coef 1, token_mean): "
                    "A_t = teacher_t - old_t on each loss token, through the clipped surrogate.",
     "knobs": {"estimator": "none", "aggregation": "token_mean", "teacher_coef": 1.0},
     "inputs": {"group_size": 4, "mask": UNEVEN_MASK_8x5, "old_max": -0.01, "shift": 0.3,
                "teacher_shift": 0.8, "seed": 67,
                **outcome([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5, 0.0])}},
    {"name": "distill_with_outcome_and_kl",
     "description": "The teacher term (coef 0.5) added to GRPO's group advantages, with beta "
                    "0.04 k3 to the reference and seq_mean_token_mean over uneven lengths.",
     "knobs": {"beta": 0.04, "teacher_coef": 0.5},
     "inputs": {**AGG_INPUTS, "old_max": -0.01, "shift": 0.3, "teacher_shift": 0.6,
                "seed": 68}},
]


def draw_logprobs(spec: dict[str, Any]) -> dict[str, list[list[float]]]:
    """logprobs in [-2.2, -0.3]; old and ref shifted by up to ±shift and ±0.3; 4 decimals. With
    `old_max` in the spec, old log-probs above it are set to it (large shifts stay log-probs)."""
    rng = random.Random(spec["seed"])
    ceiling = spec.get("old_max", math.inf)
    rows, cols = len(spec["mask"]), len(spec["mask"][0])
    logprobs, old, ref = [], [], []
    for i in range(rows):
        lp = [round(rng.uniform(-2.2, -0.3), 4) for _ in range(cols)]
        logprobs.append(lp)
        old.append([round(min(x + rng.uniform(-spec["shift"], spec["shift"]), ceiling), 4)
                    for x in lp])
        ref.append([round(x + rng.uniform(-0.3, 0.3), 4) for x in lp])
    for (i, t), log_ratio in spec.get("old_overrides", {}).items():
        old[i][t] = round(logprobs[i][t] - log_ratio, 4)
    drawn = {"logprobs": logprobs, "old_logprobs": old, "ref_logprobs": ref}
    if "sampler_shift" in spec:
        drawn["sampler_logprobs"] = draw_sampler(old, spec["seed"], spec["sampler_shift"])
    if "teacher_shift" in spec:  # from their own generator, as the sampler's
        rng = random.Random(spec["seed"] + 20_000)
        drawn["teacher_logprobs"] = [[round(min(x + rng.uniform(-spec["teacher_shift"],
                                                                spec["teacher_shift"]), -1e-4), 4)
                                      for x in row] for row in old]
    return drawn


def draw_sampler(old: list[list[float]], seed: int, shift: float) -> list[list[float]]:
    """The rollout engine's log-probs: old shifted by up to ±shift, at most -1e-4 (a log-prob),
    from their own generator so the other inputs stay those of the same seed without a sampler."""
    rng = random.Random(seed + 10_000)
    return [[round(min(x + rng.uniform(-shift, shift), -1e-4), 4) for x in row] for row in old]


def build_case(entry: dict[str, Any]) -> dict[str, Any]:
    spec = entry["inputs"]
    knobs = {**DEFAULT_KNOBS, "max_completion_length": len(spec["mask"][0]),
             **entry.get("knobs", {})}
    inputs: dict[str, Any] = {"group_size": spec["group_size"], **draw_logprobs(spec),
                              "completion_mask": spec["mask"]}
    for key in ("rewards", "reward_weights", "step_rewards"):
        if key in spec:
            inputs[key] = spec[key]
    case = {"name": entry["name"], "description": entry["description"], "knobs": knobs,
            "inputs": inputs, "tolerance": 1e-5}
    case["expected"] = reference.expected(case)
    check_regimes(case, entry.get("requires", []))
    return case


def regimes(case: dict[str, Any]) -> set[str]:
    """Which branches of the surrogate the unmasked tokens of a case hit; fails near a kink."""
    knobs, inputs = case["knobs"], case["inputs"]
    if knobs.get("loss", "clip") != "clip":
        return family_regimes(case)
    adv = reference.token_advantages(case["expected"]["advantages"], len(inputs["logprobs"][0]))
    raw = reference.log_ratios(inputs["logprobs"], inputs["old_logprobs"],
                               inputs["completion_mask"], knobs["ratio"])
    low, high, dual = 1 - knobs["clip_low"], 1 + knobs["clip_high"], knobs["dual_clip"]
    hit = set()
    for i, row in enumerate(raw):
        for t, x in enumerate(row):
            a = adv[i][t]
            if not inputs["completion_mask"][i][t] or a == 0:
                continue
            rho = math.exp(reference.clamp(x, -20.0, 20.0))
            kinks = [low, high] + ([dual] if dual and a < 0 else [])
            if min(abs(rho - k) for k in kinks) < KINK_MARGIN or abs(abs(x) - 20) < KINK_MARGIN:
                raise ValueError(f"{case['name']}: ratio {rho} at ({i}, {t}) sits on a kink")
            hit.add("clamp" if abs(x) > 20 else "inside" if low < rho < high else
                    ("clipped_pos" if rho > high else "unclipped_pos_low") if a > 0 else
                    "clipped_neg" if rho < low else
                    "dual_clip" if dual and rho > dual else "unclipped_neg_high")
    return hit


def family_regimes(case: dict[str, Any]) -> set[str]:
    """Regimes of loss cispo, sapo or gmpo, named <loss>_<where>_<sign of A>: cispo's weight above
    1+clip_high, below 1-clip_low or inside; sapo's ratio above or below 1; gmpo's log-ratio
    clipped (above clip_high with A > 0, below -clip_low with A < 0) or inside. Fails when a
    cispo ratio or a gmpo log-ratio sits within KINK_MARGIN of its bound."""
    knobs, inputs = case["knobs"], case["inputs"]
    loss, mask = knobs["loss"], inputs["completion_mask"]
    adv = reference.token_advantages(case["expected"]["advantages"], len(mask[0]))
    level = "token" if loss == "gmpo" else knobs["ratio"]
    raw = reference.log_ratios(inputs["logprobs"], inputs["old_logprobs"], mask, level)
    low, high = 1 - knobs["clip_low"], 1 + knobs["clip_high"]
    hit = set()
    for i, row in enumerate(raw):
        for t, x in enumerate(row):
            a = adv[i][t]
            if not mask[i][t] or a == 0:
                continue
            sign, rho = "pos" if a > 0 else "neg", math.exp(reference.clamp(x, -20.0, 20.0))
            if loss == "gmpo":
                bound = knobs["clip_high"] if a > 0 else -knobs["clip_low"]
                kinks, where = [abs(x - bound)], "clipped" if (x - bound) * a > 0 else "inside"
            elif loss == "cispo":
                kinks = [abs(rho - low), abs(rho - high)]
                where = "above" if rho > high else "below" if rho < low else "inside"
            else:
                kinks, where = [1.0], "above" if rho > 1 else "below"
            if min(kinks) < KINK_MARGIN:
                raise ValueError(f"{case['name']}: ratio {rho} at ({i}, {t}) sits on a kink")
            hit.add(f"{loss}_{where}_{sign}")
    return hit


def correction_regimes(case: dict[str, Any]) -> set[str]:
    """Whether the rollout-correction ratios of unmasked tokens fall below or above C; fails
    when one sits within THRESHOLD_MARGIN (relative) of C."""
    knobs, inputs = case["knobs"], case["inputs"]
    if knobs.get("rollout_correction", "none") == "none":
        return set()
    threshold = knobs["rollout_correction_threshold"]
    ratios = reference.correction_ratios(inputs["old_logprobs"], inputs["sampler_logprobs"],
                                         inputs["completion_mask"],
                                         knobs["rollout_correction_level"])
    hit = set()
    for i, row in enumerate(ratios):
        for t, rho in enumerate(row):
            if not inputs["completion_mask"][i][t]:
                continue
            if abs(rho - threshold) < THRESHOLD_MARGIN * threshold:
                raise ValueError(f"{case['name']}: correction ratio {rho} at ({i}, {t}) sits on C")
            hit.add("corr_over" if rho > threshold else "corr_kept")
    return hit


def check_regimes(case: dict[str, Any], required: list[str]) -> None:
    missing = set(required) - regimes(case) - correction_regimes(case)
    if missing:
        raise ValueError(f"{case['name']} does not exercise {sorted(missing)}; change its seed")


def copy_shared_examples() -> list[str]:
    """Copy the shared examples after checking the reference reproduces them within 1e-9."""
    names = []
    for path in sorted(SHARED.glob("*.json")) if SHARED.is_dir() else []:
        case = json.loads(path.read_text())
        got = reference.expected(case)
        for field, want in case["expected"].items():
            deviation = max_deviation(got[field], want)
            if deviation > 1e-9:
                raise ValueError(f"reference differs from {path.name} in {field} by {deviation}")
        (OUT / path.name).write_text(path.read_text())
        names.append(path.name)
    return names


def max_deviation(got: Any, want: Any) -> float:
    if isinstance(want, list):
        return max([max_deviation(g, w) for g, w in zip(got, want)] + [0.0])
    return abs(got - want)


def main(names: list[str]) -> None:
    """Write every case and copy the shared examples, or write only the cases named."""
    unknown = set(names) - {entry["name"] for entry in CASES}
    if unknown:
        raise SystemExit(f"no such case: {sorted(unknown)}")
    OUT.mkdir(exist_ok=True)
    for entry in CASES:
        if names and entry["name"] not in names:
            continue
        case = build_case(entry)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case, indent=1) + "\n")
        hit = sorted(regimes(case) | correction_regimes(case))
        print(f"wrote {case['name']}: regimes {hit}")
    for name in [] if names else copy_shared_examples():
        print(f"copied {name}")


if __name__ == "__main__":
    main(sys.argv[1:])

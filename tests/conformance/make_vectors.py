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
]


def draw_logprobs(spec: dict[str, Any]) -> dict[str, list[list[float]]]:
    """logprobs in [-2.2, -0.3]; old and ref shifted by up to ±shift and ±0.3; 4 decimals."""
    rng = random.Random(spec["seed"])
    rows, cols = len(spec["mask"]), len(spec["mask"][0])
    logprobs, old, ref = [], [], []
    for i in range(rows):
        lp = [round(rng.uniform(-2.2, -0.3), 4) for _ in range(cols)]
        logprobs.append(lp)
        old.append([round(x + rng.uniform(-spec["shift"], spec["shift"]), 4) for x in lp])
        ref.append([round(x + rng.uniform(-0.3, 0.3), 4) for x in lp])
    for (i, t), log_ratio in spec.get("old_overrides", {}).items():
        old[i][t] = round(logprobs[i][t] - log_ratio, 4)
    drawn = {"logprobs": logprobs, "old_logprobs": old, "ref_logprobs": ref}
    if "sampler_shift" in spec:
        drawn["sampler_logprobs"] = draw_sampler(old, spec["seed"], spec["sampler_shift"])
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

"""The conformance vectors: grpokit passes them, the naive reference reproduces them, bad files fail
with clear messages, and the `conformance` command reports and exits accordingly."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest

from grpokit.conformance import (
    RTOL, VectorError, add_commands, load_case, run_case, run_paths,
)

REPO = Path(__file__).parents[2]
VECTORS = REPO / "tests" / "conformance" / "vectors"
SHARED = Path(__file__).parents[3] / "shared" / "conformance"


def _load_reference():
    spec = importlib.util.spec_from_file_location(
        "grpokit_conformance_reference", REPO / "tests" / "conformance" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference()
OWN_FILES = sorted(VECTORS.glob("*.json"))
SHARED_FILES = sorted(SHARED.glob("*.json")) if SHARED.is_dir() else []


def _deviation(got, want) -> float:
    if isinstance(want, dict):
        assert set(got) == set(want)
        return max((_deviation(got[k], w) for k, w in want.items()), default=0.0)
    if isinstance(want, list):
        return max((_deviation(g, w) for g, w in zip(got, want, strict=True)), default=0.0)
    return abs(got - want)


def test_own_vectors_exist():
    assert len(OWN_FILES) >= 20
    names = {path.stem for path in OWN_FILES}
    assert {"rollout_tis_token", "rollout_tis_sequence", "rollout_mis_token",
            "rollout_mis_sequence", "rollout_none_with_sampler_logprobs"} <= names


def test_rollout_correction_none_changes_no_number_of_the_same_batch():
    """Sampler log-probs under mode none add metrics only: the loss numbers are those of the
    uncorrected vector drawn from the same seed."""
    plain = json.loads((VECTORS / "agg_seq_mean_token_mean_uneven.json").read_text())
    none = json.loads((VECTORS / "rollout_none_with_sampler_logprobs.json").read_text())
    assert {k: none["expected"][k] for k in plain["expected"]} == plain["expected"]
    assert none["expected"]["metrics"]["is_clipped_frac"] == 0.0


def test_mis_token_vector_matches_the_hand_derivation():
    """DERIVATIONS.md section 9: a token masked by MIS keeps only β·KL, a kept one is weighted."""
    expected = json.loads((VECTORS / "rollout_mis_token.json").read_text())["expected"]
    assert expected["per_token_loss"][0][1] == pytest.approx(1.44497e-5, rel=1e-4)
    assert expected["grad_logprobs"][0][1] == pytest.approx(2.66388e-5, rel=1e-4)
    assert expected["per_token_loss"][0][0] == pytest.approx(-1.115465, abs=1e-6)
    assert expected["grad_logprobs"][0][0] == pytest.approx(-0.0277458, abs=1e-7)


def test_reference_correction_weights_by_hand():
    # old - sampler = log 3, 0, log 0.5 and C = 2; the sum log 1.5 for the sequence level
    old, sampler, mask = [[math.log(3.0), 0.0, math.log(0.5)]], [[0.0, 0.0, 0.0]], [[1, 1, 1]]
    token = reference.correction_ratios(old, sampler, mask, "token")[0]
    assert token == pytest.approx([3.0, 1.0, 0.5])
    assert [reference.correction_weight(r, "tis", 2.0) for r in token] == pytest.approx([2, 1, 0.5])
    assert [reference.correction_weight(r, "mis", 2.0) for r in token] == pytest.approx([0, 1, 0.5])
    sequence = reference.correction_ratios(old, sampler, mask, "sequence")[0]
    assert sequence == pytest.approx([1.5] * 3)


@pytest.mark.parametrize("path", OWN_FILES + SHARED_FILES, ids=lambda p: p.stem)
def test_grpokit_passes_vector(path):
    result = run_case(load_case(path), str(path))
    assert result.passed, f"{result.name}: {result.failed_field} off by {result.max_deviation}"


@pytest.mark.skipif(not SHARED_FILES, reason="shared conformance examples not present")
@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: p.stem)
def test_reference_reproduces_shared_examples(path):
    case = json.loads(path.read_text())
    got = reference.expected(case)
    for field, want in case["expected"].items():
        assert _deviation(got[field], want) < 1e-9, field


@pytest.mark.parametrize("path", OWN_FILES, ids=lambda p: p.stem)
def test_committed_vectors_match_reference(path):
    """The JSON files are what make_vectors.py writes from the reference (not stale)."""
    case = json.loads(path.read_text())
    got = reference.expected(case)
    for field, want in case["expected"].items():
        assert _deviation(got[field], want) < 1e-9, field


def _reference_loss(case, logprobs):
    """The loss at `logprobs`, its detached parts (CISPO's weight, GSPO-token's sequence ratio)
    held at the case's own log-probs, as autograd holds them."""
    trial = copy.deepcopy(case)
    trial["inputs"]["logprobs"] = logprobs
    return reference.loss_terms(trial, reference.advantages_for(case),
                                case["inputs"]["logprobs"])["loss"]


@pytest.mark.parametrize("path", OWN_FILES, ids=lambda p: p.stem)
def test_reference_gradient_matches_finite_differences(path):
    """The hand-derived gradient of reference.py against central differences of its own loss."""
    case, _ = reference.with_logprobs(json.loads(path.read_text()))
    grad = reference.expected(case)["grad_logprobs"]
    logprobs, h = case["inputs"]["logprobs"], 1e-7
    for i, row in enumerate(logprobs):
        for t in range(len(row)):
            up, down = copy.deepcopy(logprobs), copy.deepcopy(logprobs)
            up[i][t] += h
            down[i][t] -= h
            numeric = (_reference_loss(case, up) - _reference_loss(case, down)) / (2 * h)
            assert numeric == pytest.approx(grad[i][t], abs=1e-6), (i, t)


@pytest.mark.parametrize("rewards,group_size,estimator,scale,expected", [
    # mean 0.125, Bessel std sqrt(0.875/7) = 0.35355: 0.875/0.35355 = 2.4749, -0.125/0.35355
    ([1.0] + [0.0] * 7, 8, "grpo", "group", [2.474873] + [-0.353553] * 7),
    # Dr. GRPO: r - mean only
    ([1.0, 0.0, 0.0, 0.5], 4, "grpo", "none", [0.625, -0.375, -0.375, 0.125]),
    # RLOO: 1 - 0, 0 - 1/3
    ([1.0, 0.0, 0.0, 0.0], 4, "rloo", "none", [1.0, -1 / 3, -1 / 3, -1 / 3]),
    # one unscorable member: group of [1, 0] left, mean 0.5, std sqrt(0.5)
    ([1.0, None, 0.0, 0.0], 2, "grpo", "group", [0.0, 0.0, 0.0, 0.0]),
    ([1.0, 0.0, None, 0.0, 0.0, 0.0], 3, "grpo", "group", [0.707106, -0.707106] + [0.0] * 4),
    # ties and group size 1 give exactly 0
    ([0.1, 0.1, 0.1], 3, "grpo", "group", [0.0, 0.0, 0.0]),
    ([1.0, 0.0], 1, "grpo", "group", [0.0, 0.0]),
])
def test_reference_outcome_advantages(rewards, group_size, estimator, scale, expected):
    got = reference.outcome_advantages(rewards, group_size, estimator, scale, 1e-6)
    assert got == pytest.approx(expected, abs=1e-5)


def test_reference_process_advantages():
    # steps 0, 1 (completion 0) and 1 (completion 1): mean 2/3, std sqrt(1/3) = 0.57735
    got = reference.process_advantages([[[0.0, 0], [1.0, 2]], [[1.0, 1]]], 2, 3, 1e-6)
    low, high = -0.666667 / 0.57735, 0.333333 / 0.57735
    assert got[0] == pytest.approx([low + high, high, high], abs=1e-5)
    assert got[1] == pytest.approx([high, high, 0.0], abs=1e-5)


@pytest.mark.parametrize("ratio,advantage,dual,loss,slope", [
    (1.1, 1.0, None, -1.1, -1.0),    # inside the band
    (1.5, 1.0, None, -1.2, 0.0),     # clipped above, A > 0
    (0.5, 1.0, None, -0.5, -1.0),    # below the band, A > 0: unclipped is the min
    (0.5, -1.0, None, 0.8, 0.0),     # clipped below, A < 0
    (1.5, -1.0, None, 1.5, 1.0),     # above the band, A < 0: unclipped is the min
    (4.0, -1.0, 3.0, 3.0, 0.0),      # dual clip caps at -c A
])
def test_reference_surrogate(ratio, advantage, dual, loss, slope):
    assert reference.surrogate(ratio, advantage, 0.2, 0.2, dual) == pytest.approx((loss, slope))


@pytest.mark.parametrize("kind,value,slope", [
    ("k1", -0.5, 1.0),                                   # logp - ref with logp = -1, ref = -0.5
    ("k2", 0.125, -0.5),                                 # d = 0.5: d^2/2, -d
    ("k3", math.exp(0.5) - 1.5, 1.0 - math.exp(0.5)),
])
def test_reference_kl(kind, value, slope):
    assert reference.kl_estimator(-1.0, -0.5, kind) == pytest.approx((value, slope))


@pytest.mark.parametrize("mode,row0,row1", [
    ("seq_mean_token_mean", 1 / 6, 0.0),   # 3 tokens, 2 sequences; empty row counts
    ("token_mean", 1 / 3, 0.0),
    ("seq_sum_norm", 1 / 8, 0.0),          # 2 sequences x max length 4
])
def test_reference_aggregation_weights(mode, row0, row1):
    weights = reference.aggregation_weights([[1, 1, 1], [0, 0, 0]], mode, 2, 3, 4)
    assert weights[0] == pytest.approx([row0] * 3)
    assert weights[1] == pytest.approx([row1] * 3)


BROKEN = [
    (lambda c: c["knobs"].pop("aggregation"), "knobs.aggregation"),
    (lambda c: c["knobs"].update(ratio="word"), "knobs.ratio"),
    (lambda c: c["inputs"]["old_logprobs"].pop(), "inputs.old_logprobs"),
    (lambda c: c["inputs"].update(group_size=3), "inputs.group_size"),
    (lambda c: c["inputs"]["rewards"][1].append(1.0), "inputs.rewards[1]"),
    (lambda c: c["inputs"]["logprobs"][2].__setitem__(1, "x"), "inputs.logprobs[2][1]"),
    (lambda c: c["expected"].pop("loss"), "expected.loss"),
    (lambda c: c["expected"]["advantages"].pop(), "expected.advantages"),
    (lambda c: c.pop("tolerance"), "tolerance"),
    (lambda c: c["knobs"].update(rollout_correction="clip"), "knobs.rollout_correction"),
    (lambda c: c["knobs"].update(rollout_correction="tis"), "inputs.sampler_logprobs"),
    (lambda c: c["expected"].update(metrics={"mismatch_kl": 0.0}), "expected.metrics"),
]


@pytest.mark.parametrize("corrupt,field", BROKEN, ids=[field for _, field in BROKEN])
def test_malformed_vector_names_file_and_field(tmp_path, corrupt, field):
    case = json.loads((VECTORS / "adv_rloo_no_scale.json").read_text())
    corrupt(case)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(case))
    with pytest.raises(VectorError, match=r"broken\.json") as err:
        load_case(path)
    assert field in str(err.value)


def test_not_json_and_missing_paths(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VectorError, match=r"bad\.json:1: not valid JSON"):
        run_paths([tmp_path])
    with pytest.raises(VectorError, match="no such file"):
        run_paths([tmp_path / "absent.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VectorError, match="no \\*.json"):
        run_paths([tmp_path / "empty"])


def test_wrong_expected_number_fails_naming_the_field():
    case = json.loads((VECTORS / "kl_k2.json").read_text())
    case["expected"]["grad_logprobs"][0][1] += 1e-3
    result = run_case(case)
    assert not result.passed
    assert result.failed_field == "grad_logprobs"
    assert result.max_deviation == pytest.approx(1e-3, rel=1e-3)


def test_a_one_percent_error_on_a_kl_only_gradient_fails():
    """DERIVATIONS.md section 9: the token MIS masks keeps only β·KL, a gradient of 2.66388e-5.
    1% of it is 2.66e-7, far under the absolute 1e-5 of the file, so an absolute check alone
    passes it; the relative bound allows ATOL + RTOL·|b| = 1e-7 + 2.7e-10 and fails it."""
    case = json.loads((VECTORS / "rollout_mis_token.json").read_text())
    grad = case["expected"]["grad_logprobs"]
    assert grad[0][1] == pytest.approx(2.66388e-5, rel=1e-4)
    assert run_case(case).passed
    grad[0][1] *= 1.01
    result = run_case(case)
    assert not result.passed and result.failed_field == "grad_logprobs"
    assert result.max_deviation == pytest.approx(2.66388e-7, rel=1e-3)
    assert result.max_deviation < case["tolerance"]  # what the absolute rule let through


def test_the_files_tolerance_stays_the_ceiling_for_large_numbers():
    """rollout_tis_sequence's largest per-token loss, about 3.92, may be off by
    ATOL + RTOL·3.92 = 3.93e-5 under the relative bound alone; the file's absolute 1e-5 still
    caps it, so a shift of 1.5e-5 fails, and passes once the file allows 1e-4."""
    case = json.loads((VECTORS / "rollout_tis_sequence.json").read_text())
    rows = case["expected"]["per_token_loss"]
    i, t = max(((i, t) for i, row in enumerate(rows) for t in range(len(row))),
               key=lambda it: abs(rows[it[0]][it[1]]))
    assert abs(rows[i][t]) * RTOL > 1.5e-5 > case["tolerance"]
    rows[i][t] += 1.5e-5
    result = run_case(case)
    assert not result.passed and result.failed_field == "per_token_loss"
    case["tolerance"] = 1e-4  # a looser file: now the relative bound (≥ 1.8e-5) decides
    assert run_case(case).passed


def _cli(argv):
    parser = argparse.ArgumentParser(prog="grpokit")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_exit_codes(tmp_path, capsys):
    assert _cli(["conformance", str(VECTORS / "kl_k1.json"), str(VECTORS / "kl_k3.json")]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out
    case = json.loads((VECTORS / "kl_k1.json").read_text())
    case["expected"]["loss"] += 1.0
    (tmp_path / "off.json").write_text(json.dumps(case))
    assert _cli(["conformance", str(tmp_path)]) == 1
    assert "0 passed, 1 failed" in capsys.readouterr().out
    (tmp_path / "off.json").write_text("[]")
    assert _cli(["conformance", str(tmp_path)]) == 2
    assert "off.json" in capsys.readouterr().out

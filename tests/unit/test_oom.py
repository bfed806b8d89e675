"""Running out of memory outside the policy update names the phase, the step, the micro-batch and
its size: the no-grad log-prob passes, generation, and the SFT and DPO updates."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from grpokit.config import load_config
from grpokit.runtime.models import OutOfMemory

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB\nmore"


def _second_call_runs_out(real):
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return real(*args, **kwargs)

    return wrapped


def test_a_no_grad_log_prob_pass_names_its_phase_step_and_micro_batch():
    from grpokit.training.logprobs import batched_logprobs

    def scorer(prompt_ids, prompt_mask, completion_ids, completion_mask, **kwargs):
        return torch.zeros(completion_ids.shape), None

    batch = SimpleNamespace(prompt_ids=torch.ones(3, 4, dtype=torch.long),
                            prompt_mask=torch.ones(3, 4, dtype=torch.bool),
                            completion_ids=torch.ones(3, 5, dtype=torch.long),
                            completion_mask=torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] * 5]))
    with pytest.raises(OutOfMemory, match=re.escape(
            "out of memory at step 4, micro-batch 2 of 3 (1 sequences, 9 tokens): CUDA out of "
            "memory. Tried to allocate 2.00 GiB; lower train.max_tokens_per_micro_batch or "
            "train.micro_batch_size (in the reference log-probs)")):
        batched_logprobs(_second_call_runs_out(scorer), batch, micro_batch_size=1,
                         temperature=1.0, chunk_size=8, step=4, phase="the reference log-probs")


def test_generation_names_the_step_and_its_prompts():
    from grpokit.data.datasets import named_rows
    from grpokit.data.sampler import PromptSampler
    from grpokit.testing import tiny_tokenizer
    from grpokit.training.groups import PromptGroups, sample_groups

    def generate(*args, **kwargs):
        raise torch.OutOfMemoryError(CUDA_OOM)

    cfg = load_config(overrides=["rollout.prompts_per_step=2", "rollout.group_size=3",
                                 "rollout.max_new_tokens=7"])
    session = SimpleNamespace(
        cfg=cfg, tokenizer=tiny_tokenizer(), env=None, rewards=[],
        engine=SimpleNamespace(generate=generate),
        task=SimpleNamespace(system_prompt_for=lambda system: None))
    rows = named_rows([{"prompt": "a"}, {"prompt": "b"}], "row")
    groups = PromptGroups(session, rows, runner=object())
    prompt_tokens = sum(map(len, groups.prompt_ids))
    with pytest.raises(OutOfMemory, match=re.escape(
            f"out of memory at step 6, micro-batch 1 of 1 (2 prompts of {prompt_tokens} tokens "
            "in all, 3 completions each of up to 7 tokens): CUDA out of memory. Tried to "
            "allocate 2.00 GiB; lower rollout.prompts_per_step, rollout.group_size or "
            "rollout.max_new_tokens")):
        sample_groups(groups, PromptSampler(2, 2, seed=0), 5, cfg)


@pytest.mark.parametrize("command, patched", [("sft", "sft_loss"), ("dpo", "pairs_loss")])
def test_the_sft_and_dpo_updates_name_step_micro_batch_and_tokens(
        command, patched, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import importlib

    from grpokit.cli import main

    module = importlib.import_module(f"grpokit.stages.{command}")
    monkeypatch.setattr(module, patched, _second_call_runs_out(getattr(module, patched)))
    rows = [{"prompt": f"{a}+1?", "completion": str(a + 1), "chosen": str(a + 1),
             "rejected": str(a + 2)} for a in range(6)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([command, f"model.path={tiny_model_dir}", f"data.path={path}",
                 f"log.output_dir={tmp_path / 'run'}", "train.steps=1", "train.micro_batch_size=2",
                 "rollout.prompts_per_step=4", "eval.before_and_after=false",
                 "eval.num_prompts=0", "log.report_to=[]"]) == 2
    err = capsys.readouterr().err
    # micro_batch_size=2 sequences: 2 SFT rows, or 1 DPO pair (its chosen and rejected)
    assert re.search(rf"grpokit: error: out of memory at step 1, micro-batch 2 of \d+ "
                     rf"\(2 sequences, \d+ tokens\): CUDA out of memory. Tried to "
                     rf"allocate 2.00 GiB; lower train.max_tokens_per_micro_batch .*"
                     rf"\(in the {command.upper()} update\)", err), err
    assert "Traceback" not in err


def test_the_trainers_reference_pass_names_step_and_phase(tiny_model_dir, tmp_path, monkeypatch):
    """grpokit train with β > 0: an out-of-memory error in the reference forward names the
    training step it belongs to and that it was the reference pass."""
    from grpokit.stages.grpo import train
    from grpokit.training import logprobs

    real = logprobs.batched_logprobs

    def spy(model, batch, **kwargs):
        if kwargs.get("phase") == "the reference log-probs":
            model = lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError(CUDA_OOM))  # noqa: E731
        return real(model, batch, **kwargs)

    monkeypatch.setattr("grpokit.rl.update.batched_logprobs", spy)
    cfg = load_config(overrides=[
        f"model.path={tiny_model_dir}", f"log.output_dir={tmp_path / 'run'}", "train.steps=1",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "eval.before_and_after=false", "log.report_to=[]", "algo.beta=0.04",
        "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"])
    with pytest.raises(OutOfMemory, match=r"at step 1, micro-batch 1 of .*\(in the reference "
                                          r"log-probs\)"):
        train(cfg)

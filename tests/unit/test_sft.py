"""Supervised fine-tuning: the loss covers completion tokens only, targets, row errors, and the
SFT → GRPO hand-off on a tiny random model."""

import json
from copy import deepcopy

import pytest
import torch

from grpokit.config import ConfigError, load_config
from grpokit.data.supervised import SFTExample, collate, encode_example, split_row
from grpokit.errors import DataError
from grpokit.stages.sft import load_examples, make_state, run_sft, sft_loss, train_step
from grpokit.testing import tiny_llama


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=3)


def _examples(tokenizer, pairs):
    return [SFTExample(tokenizer(p)["input_ids"], tokenizer(c)["input_ids"]) for p, c in pairs]


PAIRS = [("What is 2+3?", "5!"), ("Hi", "hello there"), ("Count: 1 2", "3 4 5")]


# ---------------------------------------------------------------- the loss


def test_loss_is_the_token_mean_of_a_direct_log_softmax_over_completion_tokens(tiny):
    model, tokenizer = tiny
    examples = _examples(tokenizer, PAIRS)
    picked = []
    for e in examples:  # one unpadded sequence at a time, full logits, completion positions only
        ids = torch.tensor([e.prompt_ids + e.completion_ids])
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (L, V)
        p = len(e.prompt_ids)
        picked += [logp[p - 1 + j, tok] for j, tok in enumerate(e.completion_ids)]
    expected = -torch.stack(picked).mean()
    num_tokens = sum(len(e.completion_ids) for e in examples)
    assert num_tokens == len(picked) == 2 + 11 + 5
    loss = sft_loss(model, collate(examples, tokenizer.pad_token_id), num_tokens)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def _hidden_hook(model, edit=None):
    """Keep (and optionally edit) the final hidden states, which feed only the next-token head."""
    kept = {}

    def hook(_module, _inputs, output):
        output = edit(output) if edit is not None else output
        output.retain_grad()
        kept["hidden"] = output
        return output

    return kept, model.model.norm.register_forward_hook(hook)


def test_positions_that_predict_prompt_tokens_get_exactly_zero_gradient(tiny):
    model, tokenizer = tiny
    examples = _examples(tokenizer, PAIRS)
    batch = collate(examples, tokenizer.pad_token_id)
    kept, handle = _hidden_hook(model)
    try:
        sft_loss(model, batch, 18).backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    grad = kept["hidden"].grad.abs().sum(-1)  # (N, P + T) after trimming
    width = batch["prompt_ids"].shape[1]
    for i, e in enumerate(examples):
        # hidden at position width - 1 + j predicts completion token j; earlier ones predict prompt
        assert torch.all(grad[i, : width - 1] == 0)
        assert torch.all(grad[i, width - 1 : width - 1 + len(e.completion_ids)] > 0)
        assert torch.all(grad[i, width - 1 + len(e.completion_ids) :] == 0)  # padding


def test_changing_the_prediction_of_prompt_tokens_leaves_the_loss_unchanged(tiny):
    model, tokenizer = tiny
    examples = _examples(tokenizer, PAIRS)
    batch = collate(examples, tokenizer.pad_token_id)
    width = batch["prompt_ids"].shape[1]
    base = sft_loss(model, batch, 18)

    def scramble(hidden):
        noise = torch.zeros_like(hidden)
        noise[:, : width - 1] = 100.0 * torch.randn_like(hidden[:, : width - 1])
        return hidden + noise

    _, handle = _hidden_hook(model, scramble)
    try:
        changed = sft_loss(model, batch, 18)
    finally:
        handle.remove()
    assert torch.equal(base, changed)


def test_micro_batch_split_leaves_the_step_gradient_unchanged(tiny):
    model, tokenizer = tiny
    examples = _examples(tokenizer, PAIRS)
    grads = []
    for size in (1, 3):
        copy = deepcopy(model)  # each step starts from the same weights
        cfg = load_config(overrides=[f"train.micro_batch_size={size}", "train.max_grad_norm=0"])
        state = make_state(cfg, copy, len(examples))
        state.optimizer.register_step_pre_hook(lambda opt, *_: grads.append(
            torch.cat([p.grad.flatten() for g in opt.param_groups for p in g["params"]])))
        train_step(copy, examples, state, cfg, tokenizer.pad_token_id)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_non_finite_loss_stops_with_a_clear_error(tiny):
    from grpokit.training.state import NonFiniteError

    model, tokenizer = tiny
    model = type(model)(model.config)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    cfg = load_config(overrides=["train.micro_batch_size=4"])
    state = make_state(cfg, model, 3)
    with pytest.raises(NonFiniteError, match="non-finite SFT loss"):
        train_step(model, _examples(tokenizer, PAIRS), state, cfg, tokenizer.pad_token_id)


# ---------------------------------------------------------------- targets and rows

ARITH = {"prompt": "What is 2 + 3?", "answer": "5", "expression": "2+3"}
COUNTDOWN = {"prompt": "Use [1, 2, 3]", "numbers": [1, 2, 3], "target": 9, "solution": "(1 + 2) * 3"}


def task_target_rule(task, args):
    """The SFT target rule of a built-in task, as `grpokit sft` takes it from the task."""
    from grpokit.data import load_task

    return load_task(task, **args, train_size=4, eval_size=0).sft_target


@pytest.mark.parametrize("task, args, row, expected", [
    ("arithmetic", {"style": "short"}, ARITH, "<answer>5</answer>"),
    ("arithmetic", {}, ARITH, "<answer>5</answer>"),  # the task's default style is short
    ("arithmetic", {"style": "r1"}, ARITH, "<think>2+3 = 5</think> <answer>5</answer>"),
    ("countdown", {}, COUNTDOWN, "<think>(1 + 2) * 3 = 9</think> <answer>(1 + 2) * 3</answer>"),
])
def test_task_targets(task, args, row, expected):
    prompt_row, target = split_row(row, "row 0", task_target_rule(task, args))
    assert target == expected and prompt_row is row


def test_task_targets_get_full_format_and_countdown_rewards():
    from grpokit.rewards import registry
    from grpokit.rewards.base import RewardSpec, Sample

    rule = task_target_rule("countdown", {})
    samples = [Sample(rule(COUNTDOWN), COUNTDOWN)]
    assert registry.build(RewardSpec("countdown", 1.0))(samples) == [1.0]
    assert registry.build(RewardSpec("format", 1.0))(samples) == [1.0]
    arith = [Sample(task_target_rule("arithmetic", {"style": "r1"})(ARITH), ARITH)]
    assert registry.build(RewardSpec("format", 1.0))(arith) == [1.0]


MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("row, prompt_row, target", [
    ({"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c"}, "c"),
    ({"messages": MESSAGES, "id": 1}, {"messages": MESSAGES[:1], "id": 1}, "hello"),
    ({"messages": MESSAGES[:1], "completion": "c"}, {"messages": MESSAGES[:1], "completion": "c"}, "c"),
])
def test_row_forms(row, prompt_row, target):
    assert split_row(row, "row 0") == (prompt_row, target)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p"}, r"row 7: no SFT target.*'completion' column.*keys: \['prompt'\]"),
    ({"prompt": "p", "completion": "  "}, r"row 7: 'completion' must be a non-empty string"),
    ({"prompt": "p", "completion": None}, r"row 7: 'completion' must be a non-empty string"),
    ({"messages": MESSAGES[1:]}, r"row 7: messages hold only the assistant turn"),
    ({"messages": [MESSAGES[0], {"role": "assistant", "content": ""}]},
     r"row 7: the last \(assistant\) message's 'content' must be a non-empty string"),
    ({"messages": MESSAGES, "completion": "c"}, r"row 7: has both 'completion' and messages"),
    ({"messages": MESSAGES[:1]}, r"row 7: no SFT target"),
])
def test_bad_rows_name_the_row_and_field(row, message):
    with pytest.raises(ValueError, match=message):
        split_row(row, "row 7")


def test_countdown_row_without_solution_is_an_error():
    rule = task_target_rule("countdown", {})
    with pytest.raises(ValueError, match="row 2: the reference solution must be a non-empty"):
        split_row({**COUNTDOWN, "solution": ""}, "row 2", rule)


def test_encode_example_renders_the_prompt_and_ends_the_target_with_eos(tiny):
    from grpokit.data.render import render_prompt

    _, tokenizer = tiny
    row = {"prompt": "2+2?", "completion": "4"}
    e = encode_example(row, tokenizer, where="row 0", system_prompt="Be brief.",
                       max_prompt_length=100, max_completion_length=2)
    text = render_prompt(row, tokenizer, "Be brief.")
    assert text.endswith("<|im_start|>assistant\n") and "Be brief." in text
    assert e.prompt_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert e.completion_ids == [tokenizer.convert_tokens_to_ids("4"), tokenizer.eos_token_id]
    with pytest.raises(ValueError, match=r"row 3: the target is 2 tokens.*sft.max_target_length=1"):
        encode_example(row, tokenizer, where="row 3", system_prompt=None, max_prompt_length=100,
                       max_completion_length=1)
    with pytest.raises(ValueError, match=r"row 4: the prompt is \d+ tokens.*max_prompt_length=5"):
        encode_example(row, tokenizer, where="row 4", system_prompt=None, max_prompt_length=5,
                       max_completion_length=9)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_columns_are_mapped_and_errors_name_the_file_row(tiny, tmp_path):
    _, tokenizer = tiny
    rows = [{"question": f"q{i}", "response": f"r{i}"} for i in range(4)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_config(overrides=[f"data.path={path}", "data.prompt_column=question",
                                 "data.columns={response: completion}", "data.eval_fraction=0.25"])
    train, held_out = load_examples(cfg, tokenizer)
    assert len(train) == 3 and len(held_out) == 1
    bad = _jsonl(tmp_path / "bad.jsonl", [*rows[:2], {"question": "q", "response": ""}])
    cfg = load_config(overrides=[f"data.path={bad}", "data.prompt_column=question",
                                 "data.columns={response: completion}"])
    with pytest.raises(ValueError, match=r"bad.jsonl: line 3: 'completion' must be a non-empty"):
        load_examples(cfg, tokenizer)


def test_task_without_a_target_rule_is_a_config_error(tiny):
    cfg = load_config(overrides=["data.task=humaneval"])
    with pytest.raises(ConfigError, match="data.task: task 'humaneval' has no rule"):
        load_examples(cfg, tiny[1])


@pytest.mark.parametrize("command, row", [
    ("sft", {"prompt": "q", "completion": "a much longer target than four tokens"}),
    ("dpo", {"prompt": "q", "chosen": "a", "rejected": "a much longer answer than four tokens"}),
])
def test_an_over_long_target_exits_2_naming_file_and_line(command, row, tiny_model_dir, tmp_path,
                                                          capsys):
    from grpokit.cli import main

    short = {"prompt": "p", "completion": "c"} if command == "sft" else \
        {"prompt": "p", "chosen": "c", "rejected": "d"}
    path = _jsonl(tmp_path / "d.jsonl", [short, short, row, short])
    limit = "sft.max_target_length" if command == "sft" else "dpo.max_completion_length"
    code = main([command, f"model.path={tiny_model_dir}", f"data.path={path}",
                 f"log.output_dir={tmp_path / 'run'}", f"{limit}=4", "log.report_to=[]"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{path}: line 3: " in err and f"tokens with EOS, longer than {limit}=4" in err, err


def test_built_in_task_rows_are_named_1_based_as_grpo_names_them(tiny):
    cfg = load_config(overrides=["data.task=arithmetic", "sft.max_target_length=1"])
    with pytest.raises(DataError, match=r"^task 'arithmetic': training row 1: the target is"):
        load_examples(cfg, tiny[1])


def test_a_megabyte_prompt_is_refused_by_its_length_before_tokenizing(monkeypatch):
    from grpokit.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenized"))
    with pytest.raises(DataError, match=r"^row 9: the prompt is \d+ characters, so at least "
                                        r"\d+ tokens .*longer than max_prompt_length=512"):
        encode_example({"prompt": "x" * 5_000_000, "completion": "y"}, tokenizer, where="row 9",
                       system_prompt=None, max_prompt_length=512, max_completion_length=8)


# ---------------------------------------------------------------- end to end

SFT = ["train.steps=6", "sft.batch_size=4", "train.micro_batch_size=2", "train.lr=3e-3",
       "sft.max_target_length=24", "data.max_prompt_length=256", "log.report_to=[]"]


def test_sft_reduces_the_loss_and_hands_off_to_grpo_training(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from grpokit.stages.grpo import train

    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}?"},
                          {"role": "assistant", "content": f"<answer>{a + b}</answer>"}]}
            for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (4, 4), (6, 2)]]
    data = _jsonl(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "sft"
    overrides = [f"model.path={tiny_model_dir}", f"log.output_dir={out}", f"data.path={data}",
                 f"data.eval_path={data}", "checkpoint.every=3", "checkpoint.keep_last=0", *SFT]
    results = run_sft(load_config(overrides=overrides))
    assert results["after"]["loss"] < 0.5 * results["before"]["loss"]  # on the same fixed rows
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss/sft", "optim/lr", "optim/grad_norm", "perf/train_tokens_per_s"} <= set(lines[0])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000003" / "model")
    AutoModelForCausalLM.from_pretrained(out / "final")
    with pytest.raises(ConfigError, match="already holds a run"):
        run_sft(load_config(overrides=overrides))
    grpo = [f"model.path={out / 'final'}", f"log.output_dir={tmp_path / 'grpo'}", "train.steps=1",
            "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8",
            "eval.before_and_after=false", "log.report_to=[]", "data.max_prompt_length=1024",
            "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"]
    train(load_config(overrides=grpo))
    assert (tmp_path / "grpo" / "checkpoints" / "step-000001" / "model").is_dir()


def test_lora_sft_writes_a_merged_final_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    overrides = [f"model.path={tiny_model_dir}", f"log.output_dir={out}", "model.lora.enabled=true",
                 "model.lora.rank=4", "eval.num_prompts=0", *SFT, "train.steps=2",
                 "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"]
    run_sft(load_config(overrides=overrides))
    assert not (out / "final" / "adapter_config.json").exists()
    assert (out / "final" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    assert not any("lora" in name for name, _ in merged.named_parameters())


@pytest.mark.parametrize("lora", [False, True])
def test_resume_two_plus_two_equals_four_steps(tiny_model_dir, tmp_path, lora):
    from safetensors.torch import load_file

    from grpokit.stages.grpo import train

    base = [f"model.path={tiny_model_dir}", "eval.before_and_after=false", "checkpoint.keep_last=0",
            *SFT, "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"]
    if lora:
        base += ["model.lora.enabled=true", "model.lora.rank=4"]
    weights = "adapter_model.safetensors" if lora else "model.safetensors"

    def final_weights(out):
        ckpts = sorted((out / "checkpoints").iterdir())
        return load_file(ckpts[-1] / "model" / weights), json.loads(
            (out / "metrics.jsonl").read_text().splitlines()[-1])["loss/sft"]

    straight, split = tmp_path / "straight", tmp_path / "split"
    run_sft(load_config(overrides=[*base, f"log.output_dir={straight}", "train.steps=4"]))
    run_sft(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=2"]))
    run_sft(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=4"]), resume=split)
    (w1, loss1), (w2, loss2) = final_weights(straight), final_weights(split)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert loss1 == loss2
    with pytest.raises(ConfigError, match="SFT checkpoint"):
        train(load_config(overrides=[*base, f"log.output_dir={split}"]), resume=split)

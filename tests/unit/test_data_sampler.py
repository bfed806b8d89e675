import json

import pytest
import torch

from grpokit.data.sampler import PromptSampler


def test_each_epoch_is_a_seeded_permutation():
    sampler = PromptSampler(num_rows=7, batch_size=7, seed=5)
    first, second = sampler.next_batch(), sampler.next_batch()
    assert sorted(first) == list(range(7)) and sorted(second) == list(range(7))
    assert first == torch.randperm(7, generator=torch.Generator().manual_seed(5)).tolist()
    assert second == torch.randperm(7, generator=torch.Generator().manual_seed(6)).tolist()
    # The next epoch starts only when its first prompt is drawn.
    assert sampler.epoch == 1 and sampler.prompts_consumed == 14


def test_batches_span_epoch_boundaries():
    sampler = PromptSampler(num_rows=5, batch_size=3, shuffle=False)
    assert [sampler.next_batch() for _ in range(4)] == [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1]]
    assert sampler.epoch == 2 and sampler.prompts_consumed == 12


def test_batch_larger_than_dataset():
    sampler = PromptSampler(num_rows=2, batch_size=5, shuffle=False)
    assert sampler.next_batch() == [0, 1, 0, 1, 0]
    assert sampler.prompts_consumed == 5


@pytest.mark.parametrize(
    "steps",
    [
        ["batch", "batch", "batch"],
        ["batch", "take2", "batch"],
        ["take0", "take13", "batch"],  # stops exactly at an epoch boundary
        ["batch"] * 9,
    ],
)
def test_restore_continues_like_uninterrupted(steps):
    def run(sampler, step):
        return sampler.next_batch() if step == "batch" else sampler.take(int(step[4:]))

    uninterrupted = PromptSampler(num_rows=13, batch_size=4, seed=11)
    for step in steps:
        run(uninterrupted, step)
    expected = [uninterrupted.next_batch() for _ in range(6)] + [uninterrupted.take(3)]

    interrupted = PromptSampler(num_rows=13, batch_size=4, seed=11)
    for step in steps:
        run(interrupted, step)
    state = json.loads(json.dumps(interrupted.state_dict()))
    restored = PromptSampler(num_rows=13, batch_size=4, seed=11)
    restored.load_state_dict(state)
    assert restored.prompts_consumed == interrupted.prompts_consumed
    assert [restored.next_batch() for _ in range(6)] + [restored.take(3)] == expected


def test_iter_yields_batches_forever():
    sampler = PromptSampler(num_rows=3, batch_size=2, seed=0)
    batches = iter(sampler)
    assert [len(next(batches)) for _ in range(10)] == [2] * 10
    assert sampler.prompts_consumed == 20


@pytest.mark.parametrize(
    "saved, message",
    [
        ({"num_rows": 12}, "saved num_rows=12"),
        ({"seed": 1}, "saved seed=1"),
        ({"shuffle": False}, "saved shuffle=False"),
        ({"position": 14}, "outside 0..13"),
        ({"epoch": -1}, "bad saved epoch"),
    ],
)
def test_load_state_dict_mismatch(saved, message):
    sampler = PromptSampler(num_rows=13, batch_size=4, seed=11)
    state = {**sampler.state_dict(), **saved}
    with pytest.raises(ValueError, match=message):
        PromptSampler(num_rows=13, batch_size=4, seed=11).load_state_dict(state)


@pytest.mark.parametrize("args", [(0, 2), (3, 0), (3, -1), (2.5, 1)])
def test_bad_sizes(args):
    with pytest.raises(ValueError, match="must be a positive integer"):
        PromptSampler(*args)


def test_take_rejects_negative():
    with pytest.raises(ValueError, match="non-negative"):
        PromptSampler(3, 1).take(-1)

"""A reward function a config names by its import path (examples/import_path_reward.yaml):
`rewards: [{name: my_rewards.py:brevity}]`, found beside the config file."""


def brevity(completions, **kwargs):
    """1.0 for an answer of at most 40 characters, falling to 0 at 120."""
    return [min(1.0, max(0.0, (120 - len(c)) / 80)) for c in completions]

"""What the RL stages (GRPO, PPO) share: the policy update (`update.py`: μ epochs × minibatches
× micro-batches) and the stage on the run loop (`stage.py`: `RLStage`, its parts, the schedule's
horizon)."""

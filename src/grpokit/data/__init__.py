"""Datasets, prompt rendering, built-in tasks and the resumable prompt sampler."""

from grpokit.data.base import Task, load_data, load_task, register_task, task_names
from grpokit.data.datasets import load_rows, split_rows
from grpokit.data.render import encode_prompts, prompt_messages, render_prompt
from grpokit.data.sampler import PromptSampler

__all__ = [
    "PromptSampler",
    "Task",
    "encode_prompts",
    "load_data",
    "load_rows",
    "load_task",
    "prompt_messages",
    "register_task",
    "render_prompt",
    "split_rows",
    "task_names",
]

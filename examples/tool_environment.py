"""Multi-turn episodes with an environment of your own, from Python.

The environment hands the model a question, and whenever a turn ends with `</lookup>` it answers
with the value of the word between `<lookup>` and `</lookup>` from a small table; the reward is
whether the final answer names the looked-up number. Needs: the embedded default model
(SmolLM2-135M-Instruct) and a CPU; about 1 min a step on 2 cores. Shows: `tools/use_frac` and
`reward/mean` in the console; a model this small seldom calls the tool unprompted at first.

    python examples/tool_environment.py [key=value ...]
"""

import random
import sys

import grpokit
from grpokit.rollout.base import EnvReply  # what `respond` returns for each turn

TABLE = {"apple": 3, "pear": 5, "plum": 7, "fig": 11}


class LookupEnv:
    stop_strings = ("</lookup>",)

    def first_messages(self, row):
        return [{"role": "system", "content": "Write <lookup>word</lookup> to read a word's "
                 "number, then answer with the number."},
                {"role": "user", "content": row["prompt"]}]

    def respond(self, turns):
        replies = []
        for turn in turns:
            word = turn.text.rsplit("<lookup>", 1)[-1].split("</lookup>")[0].strip()
            replies.append(EnvReply(f"<value>{TABLE.get(word, 'unknown')}</value>\n",
                                    tool_calls=1, tool_errors=int(word not in TABLE)))
        return replies


def names_the_number(completions, answer, **kwargs):
    return [1.0 if str(a) in c else 0.0 for c, a in zip(completions, answer)]


def main(overrides: list[str]) -> grpokit.RunResult:
    rng = random.Random(0)
    rows = [{"prompt": f"What is the number of {w}?", "answer": TABLE[w]}
            for w in rng.choices(sorted(TABLE), k=64)]
    return grpokit.train(None, "train.steps=10", "tools.max_turns=3",
                         "log.output_dir=runs/tool_environment", *overrides, data=rows,
                         environment=LookupEnv(), rewards=[names_the_number])


if __name__ == "__main__":
    main(sys.argv[1:])

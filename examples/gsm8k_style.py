"""GRPO on GSM8K-style word problems: `question` plus an `answer` that ends in `#### 42`; the
built-in `math` reward reads the number after the last `####`, no preprocessing.

Needs: the embedded default model (SmolLM2-135M-Instruct) and a CPU; about 1 min a step on 2
cores. The rows here are made up so that the example runs offline; on a machine online (or with
the dataset in the local cache) the real one is `data.path=openai/gsm8k data.config=main`
(docs/data.md, Datasets by name). Shows: `reward/math` and the held-out accuracy before and
after; a model this small solves few of them.

    python examples/gsm8k_style.py [key=value ...]
"""

import random
import sys

import grpokit


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, price = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 5)
        out.append({"question": f"Ann buys {a} pens and {b} pencils. Each costs ${price}. "
                                "How much does she pay?",
                    "answer": f"She buys {a} + {b} = {a + b} items.\n"
                              f"They cost {a + b} * {price} = {(a + b) * price} dollars.\n"
                              f"#### {(a + b) * price}"})
    return out


def main(overrides: list[str]) -> grpokit.RunResult:
    return grpokit.train(None, "train.steps=10", "data.prompt_column=question",
                         "rollout.max_new_tokens=96", "log.output_dir=runs/gsm8k_style",
                         *overrides, data=rows(200), rewards=["math"])


if __name__ == "__main__":
    main(sys.argv[1:])

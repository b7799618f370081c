"""Reward throughput on this machine: text rewards over 1,024 completions of ~500 tokens.

    python benchmarks/rewards.py            # text rewards (median of 5 runs each)
    python benchmarks/rewards.py --slow     # also math-verify (64 items) and code (16 programs)

The last line is ``text_rewards_seconds_1024x500: <seconds>`` (all cheap text rewards, one pass).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1 import rewards  # noqa: E402

WORDS = (
    "so we add the two numbers then carry one and check the result again wait "
    "let me verify this step because the sum looks wrong"
).split()


def make_batch(batch: int = 1024, words: int = 380, seed: int = 0):
    """~500 byte-pair tokens per completion (~380 words, ~2,000 characters)."""
    rng = random.Random(seed)
    completions, targets, numbers = [], [], []
    for i in range(batch):
        cot = " ".join(rng.choice(WORDS) for _ in range(words))
        answer = str(rng.randint(0, 999)) if i % 2 else "(25 - 5) * 3 + 4"
        completions.append(f"<think>\n{cot}\n</think>\n<answer>{answer}</answer>")
        targets.append(rng.randint(0, 999) if i % 2 else 64)
        numbers.append([25, 5, 3, 4])
    return completions, targets, numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slow", action="store_true", help="also time math-verify and code")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    completions, targets, numbers = make_batch()
    prompts = [""] * len(completions)
    fields = dict(target=targets, numbers=numbers)
    tokens = sum(len(c) for c in completions) / len(completions) / 4
    print(f"batch {len(completions)} completions, ~{tokens:.0f} tokens (chars/4) each")
    cheap = [
        ("format_strict", {}),
        ("format_lenient", {}),
        ("tag_count", {}),
        ("arithmetic", {}),
        ("countdown", {}),
        ("language", {"language": "en"}),
        ("repetition", {"ngram": 3}),
        ("overlong", {"max_length": 4096, "cache_length": 512}),
        ("cosine_length", {"max_length": 4096, "correct": [True] * len(completions)}),
    ]
    total = 0.0
    for name, kwargs in cheap:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            rewards.get(name)(prompts, completions, **fields, **kwargs)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        total += median
        print(f"{name:16s} {median * 1e3:8.2f} ms")
    spec = rewards.RewardSpec.from_config(
        [
            ("format_strict", 1.0, {}),
            ("arithmetic", 1.0, {}),
            ("language", 0.1, {"language": "en"}),
            ("repetition", 0.1, {}),
        ]
    )
    start = time.perf_counter()
    spec(prompts, completions, **fields)
    print(f"{'spec(4 terms)':16s} {(time.perf_counter() - start) * 1e3:8.2f} ms")
    if args.slow:
        golds = ["\\frac{1}{2}"] * 64
        answers = [f"<answer>\\boxed{{{x}}}</answer>" for x in ("0.5", "1/3") * 32]
        rewards.get("math")([""] * 64, answers[:2], answer=golds[:2])  # start the workers
        start = time.perf_counter()
        rewards.get("math")([""] * 64, answers, answer=golds)
        print(f"{'math (64)':16s} {(time.perf_counter() - start) * 1e3:8.2f} ms")
        program = "```python\ndef f(x):\n    return 2 * x\n```"
        start = time.perf_counter()
        rewards.get("code")([""] * 16, [program] * 16, tests=[["assert f(2) == 4"]] * 16)
        print(f"{'code (16)':16s} {(time.perf_counter() - start) * 1e3:8.2f} ms")
    print(f"text_rewards_seconds_1024x500: {total:.3f}")


if __name__ == "__main__":
    main()

"""The data the R1 pipeline generates for itself: cold-start traces and general rows.

* `cold_start_rows`: R1's readable cold-start format around the procedural task's worked
  solution. With `second_language` set, each worded phrase of a trace (its opener and its
  closer) is written in that tongue with probability `mixing`: the miniature's stand-in for
  the language mixing the paper saw in R1-Zero's outputs, which stage 2's language-consistency
  reward is there to remove. With `hasty` set, that share of traces writes the whole sum in one
  step instead of its partial sums: correct, but a habit that fails the policy on sums it cannot
  add at a glance, which stage 2's RL has to unlearn.
* `general_rows` / `general_prompts`: short requests ("Say hello to Ana") answered with one
  thought and a polite reply, R1's writing / QA / self-cognition data in miniature. Requests
  are split into train and test by a hash of their text (`procedural.split_of`), so the
  held-out general prompts of the evaluation are never trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from r1.data import procedural, templates
from r1.rm.data import CURT, POLITE

COLD_START_OPENERS = ("Step by step:", "Add them:")
COLD_START_CLOSERS = ("So", "The sum is")
# Phrasings of the second tongue, one per English phrase above (Cyrillic script, so the
# language-consistency reward for "en" scores its words as foreign).
# Tasks whose prompt is an expression, so a hasty trace can state it equal to its value.
HASTY_TASKS = ("add", "mul")
SECOND_LANGUAGE_PHRASES = {
    "ru": {
        "openers": ("По шагам:", "Сложим:"),
        "closers": ("Итак", "Сумма"),
    },
}


def cold_start_rows(
    task: Any,
    num: int,
    seed: int,
    second_language: str = "",
    mixing: float = 0.0,
    hasty: float = 0.0,
) -> list[dict[str, Any]]:
    """`num` cold-start rows of a procedural `task` (train split, seed `seed`), in R1's readable
    format: a worded chain of thought around the task's worked solution, then a summary.

    The readable format's special token is the `<think>` / `</think>` pair (as DeepSeek-R1's
    released models use) and the summary is the `<answer>` block, so stage 2's strict format
    and accuracy rules accept the traces: `response = " <think>R</think> <answer>A</answer>"`.
    second_language: "" (English only) or a key of `SECOND_LANGUAGE_PHRASES`; mixing: the
    probability in [0, 1] that each phrase is written in it. hasty: the share in [0, 1] of
    traces that skip the worked solution and write the whole expression equal to its value in
    one step (`"3+45+7=55"`; tasks whose prompt is an expression: add, mul), as a cold start
    collected from several sources would: careful and hasty traces alike are correct.
    Rows: {prompt, response, reasoning, answer, task, id, source, hasty}.
    """
    if num < 1:
        raise ValueError(f"cold_start.num_examples: expected >= 1, got {num}")
    if second_language and second_language not in SECOND_LANGUAGE_PHRASES:
        raise ValueError(
            f"cold_start.second_language: expected '' or one of "
            f"{sorted(SECOND_LANGUAGE_PHRASES)}, got {second_language!r}"
        )
    if not 0.0 <= mixing <= 1.0 or (mixing > 0 and not second_language):
        raise ValueError(
            f"cold_start.mixing: expected a probability in [0, 1] (0 without a "
            f"second_language), got {mixing}"
        )
    if not 0.0 <= hasty <= 1.0 or (hasty > 0 and task.name not in HASTY_TASKS):
        raise ValueError(
            f"cold_start.hasty: expected a share in [0, 1] (0 unless the task is one of "
            f"{HASTY_TASKS}), got {hasty} for task {task.name!r}"
        )
    other = SECOND_LANGUAGE_PHRASES.get(second_language, {})
    rows = []
    for i in range(num):
        row = procedural.generate(task, seed, i, "train")
        rng = np.random.default_rng([seed, i, 7])
        pick = rng.integers(0, 2, size=2)
        foreign = rng.random(2) < mixing
        in_one_step = bool(rng.random() < hasty)
        opener = (other["openers"] if foreign[0] else COLD_START_OPENERS)[pick[0]]
        closer = (other["closers"] if foreign[1] else COLD_START_CLOSERS)[pick[1]]
        work = f"{row['prompt']}={row['answer']}" if in_one_step else task.thinking(row)
        reasoning = f"{opener} {work}. {closer} {row['answer']}."
        summary = f"{templates.ANSWER_OPEN}{row['answer']}{templates.ANSWER_CLOSE}"
        response = templates.render_readable(
            reasoning, summary, (f" {templates.THINK_OPEN}", f"{templates.THINK_CLOSE} ")
        )
        rows.append(
            {
                "prompt": row["prompt"],
                "response": response,
                "reasoning": reasoning,
                "answer": row["answer"],
                "task": row["task"],
                "id": row["id"],
                "source": "r1.recipes.pipeline_data.cold_start_rows",
                "hasty": in_one_step,
            }
        )
    return rows


GENERAL_REQUESTS = (
    ("Say hello to {}", "a greeting", "Hello there!"),
    ("Thank {} for visiting", "thanks", "Thank you for stopping by!"),
    ("Wish {} a good day", "a kind wish", "Have a wonderful day!"),
    ("Say goodbye to {}", "a farewell", "Goodbye, and take care!"),
    ("Offer to help {}", "an offer of help", "I am here whenever you need me."),
    ("Cheer up {}", "encouragement", "You are doing great, keep going!"),
)
GENERAL_NAMES = (
    "Ana", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lea",
    "Max", "Nia", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Xena",
    "Yuri", "Zoe", "Alma", "Bo", "Cruz", "Dita", "Eli", "Faye",
)  # fmt: skip
# Share of the general requests held out for evaluation.
GENERAL_HELD_OUT = 0.25


def general_requests(split: str) -> list[tuple[str, str, str]]:
    """Every (request, what, reply) of `split` ("train" / "test"), in a fixed order."""
    if split not in procedural.SPLITS:
        raise ValueError(f"split: expected one of {procedural.SPLITS}, got {split!r}")
    out = []
    for request, what, reply in GENERAL_REQUESTS:
        for name in GENERAL_NAMES:
            text = request.format(name)
            if procedural.split_of("general", text, GENERAL_HELD_OUT) == split:
                out.append((text, what, reply))
    return out


def general_rows(num: int, seed: int) -> list[dict[str, Any]]:
    """`num` synthetic non-reasoning rows of the train split (R1's ~200k writing / QA /
    self-cognition samples in miniature): a short request, a one-sentence thought, a polite
    reply ending with one of the polite closings the synthetic preference pairs reward
    (`r1.rm.data.POLITE`). Rows: {prompt, response, task: "general", id, source}."""
    if num < 1:
        raise ValueError(f"rejection.general_examples: expected >= 1, got {num}")
    requests = general_requests("train")
    rng = np.random.default_rng([seed, 11])
    rows = []
    for i in range(num):
        request, what, reply = requests[int(rng.integers(len(requests)))]
        closing = POLITE[int(rng.integers(len(POLITE)))]
        thought = f"The user asks for {what}, so I reply briefly and kindly."
        response = templates.render_r1_zero_completion(thought, f"{reply} {closing}")
        rows.append(
            {
                "prompt": request,
                "response": response,
                "task": "general",
                "id": f"general-{seed}-{i}",
                "source": "r1.recipes.pipeline_data.general_rows",
            }
        )
    return rows


def general_prompts(num: int) -> list[str]:
    """The first `num` held-out (test split) general requests; raises when there are fewer."""
    requests = general_requests("test")
    if not 1 <= num <= len(requests):
        raise ValueError(
            f"eval.general_prompts: expected 1..{len(requests)} (the held-out general "
            f"requests), got {num}"
        )
    return [r[0] for r in requests[:num]]


def general_pairs(num: int, seed: int, split: str) -> list[dict[str, Any]]:
    """`num` preference pairs on the general requests of `split`, for the pipeline's reward
    model: the chosen reply is a `general_rows` reply (one thought, the reply, a polite
    closing); the rejected one is, in turn, the same reply with a curt closing
    (`r1.rm.data.CURT`), an off-topic sum (a reasoning-task answer to a general request), or
    the reply cut off before its closing. Rows: {prompt, chosen, rejected}."""
    if num < 1:
        raise ValueError(f"reward_model.general_pairs: expected >= 1, got {num}")
    requests = general_requests(split)
    rng = np.random.default_rng([seed, 13, procedural.SPLITS.index(split)])
    pairs = []
    for i in range(num):
        request, what, reply = requests[int(rng.integers(len(requests)))]
        thought = f"The user asks for {what}, so I reply briefly and kindly."
        chosen = templates.render_r1_zero_completion(
            thought, f"{reply} {POLITE[int(rng.integers(len(POLITE)))]}"
        )
        kind = i % 3
        if kind == 0:
            rejected = templates.render_r1_zero_completion(
                thought, f"{reply} {CURT[int(rng.integers(len(CURT)))]}"
            )
        elif kind == 1:
            a, b = (int(x) for x in rng.integers(0, 10, size=2))
            rejected = templates.render_r1_zero_completion(f"{a}+{b}={a + b}", str(a + b))
        else:
            rejected = templates.render_r1_zero_completion(thought, reply[: len(reply) // 2])
        pairs.append({"prompt": request, "chosen": chosen, "rejected": rejected})
    return pairs

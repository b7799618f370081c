"""Synthetic verdict data and a tiny judge trained on it on the CPU (3,000 small steps).

The data: for a value v in [0, `MAX_VALUE`] (the range of the CPU demo's procedural sums), a
reference answer and a prediction, each written in digits ("46") or in English words
("forty-six"); the prediction equals v (truth CORRECT) or a near miss (v +- 1, v +- 10, digits
swapped, another unit or tens digit) or a random other value (truth INCORRECT). Exact string match
fails on every mixed pair, so a rule checker cannot grade them but a judge can. A pair is in the
held-out split by a hash of its (reference, prediction) text, so held-out pairs are never trained
on (`split_of`).

The judge: a small r1 `Transformer` over the demo tokenizer plus whole-string pieces for the
number words, the judge template's literal parts and the verdict tags
(`judge_tokenizer`), fine-tuned with next-token loss on the verdict tokens only
(`judge prompt -> "[[CORRECT]]" + EOS`). `train_tiny_judge` returns the model and its measured
held-out agreement; `experiments/train_judge.py` saves it in Hugging Face layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from r1.data.tokenizers import DemoTokenizer, build_demo_tokenizer
from r1.judge import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    Judge,
    JudgeConfig,
    encode_judge_prompt,
    verdict_strings,
)
from r1.losses import next_token_loss
from r1.models.config import ModelConfig
from r1.models.transformer import Transformer

MAX_VALUE = 99
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = (*_UNITS, *_TENS)
SPLITS = ("train", "test")


def number_to_words(value: int) -> str:
    """English words of 0 <= value <= 99: 17 -> "seventeen", 46 -> "forty-six", 90 -> "ninety"."""
    if not 0 <= value <= MAX_VALUE:
        raise ValueError(f"number_to_words: expected 0..{MAX_VALUE}, got {value}")
    if value < 20:
        return _UNITS[value]
    tens, unit = divmod(value, 10)
    return _TENS[tens - 2] + ("" if unit == 0 else f"-{_UNITS[unit]}")


def words_to_number(text: str) -> int | None:
    """Inverse of `number_to_words` (None for anything else)."""
    table = {number_to_words(v): v for v in range(MAX_VALUE + 1)}
    return table.get(text.strip())


def judge_tokenizer(config: JudgeConfig | None = None) -> DemoTokenizer:
    """The demo tokenizer plus pieces for the number words, the literal parts of
    `config.template` and the verdict strings (ids of the demo pieces do not move, so every
    demo-tokenizer id means the same in the judge's vocabulary)."""
    config = config or JudgeConfig()
    literal = [v for k, v in config.segments() if k == "text"]
    pieces = [*NUMBER_WORDS, *literal, *verdict_strings(config)]
    unique = list(dict.fromkeys(p for p in pieces if len(p) >= 2))
    return build_demo_tokenizer(extra_pieces=unique)


def split_of(reference: str, prediction: str, held_out_fraction: float = 0.2) -> str:
    """ "test" for a stable `held_out_fraction` of (reference, prediction) pairs, else "train"."""
    digest = hashlib.blake2b(f"{reference}\x00{prediction}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    return "test" if u < held_out_fraction else "train"


def _near_miss(rng: np.random.Generator, value: int) -> int:
    tens, unit = divmod(value, 10)
    kind = int(rng.integers(6))
    if kind == 0:
        other = value + int(rng.choice([-1, 1]))
    elif kind == 1:
        other = value + int(rng.choice([-10, 10]))
    elif kind == 2:
        other = unit * 10 + tens
    elif kind == 3:
        other = tens * 10 + int(rng.integers(10))
    elif kind == 4:
        other = int(rng.integers(10)) * 10 + unit
    else:
        other = int(rng.integers(MAX_VALUE + 1))
    return other if 0 <= other <= MAX_VALUE else int(rng.integers(MAX_VALUE + 1))


_FORMS = ((True, False),) * 4 + ((False, True),) * 2 + ((True, True), (False, False))


def _write(value: int, words: bool) -> str:
    return number_to_words(value) if words else str(value)


def verdict_pair(seed: int, index: int) -> dict[str, Any]:
    """Pair `index` of `seed`: {"reference", "prediction", "correct": bool, "value", "other"}.

    Forms (reference / prediction): words / digits 50%, digits / words 25%, words / words and
    digits / digits 12.5% each; half the pairs are correct.
    """
    rng = np.random.default_rng([seed, index])
    value = int(rng.integers(MAX_VALUE + 1))
    correct = bool(rng.integers(2))
    other = value
    while not correct and other == value:
        other = _near_miss(rng, value)
    form = int(rng.integers(8))
    ref_words, pred_words = _FORMS[form]
    return {
        "reference": _write(value, bool(ref_words)),
        "prediction": _write(other, bool(pred_words)),
        "correct": correct,
        "value": value,
        "other": other,
    }


def verdict_pairs(seed: int, count: int, split: str = "train") -> list[dict[str, Any]]:
    """`count` pairs of `split` (pairs of the other split are skipped), deterministic in seed."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    out, index = [], 0
    while len(out) < count:
        pair = verdict_pair(seed, index)
        index += 1
        if split_of(pair["reference"], pair["prediction"]) == split:
            out.append(pair)
    return out


def verdict_text(correct: bool, config: JudgeConfig) -> str:
    """The verdict the judge is trained to write for a pair of known truth."""
    if config.verdict_format == "tags":
        return config.correct_tag if correct else config.incorrect_tag
    return config.score_pattern.format(score=config.max_score if correct else 0)


def encode_examples(
    pairs: Sequence[dict[str, Any]], tokenizer: Any, config: JudgeConfig, length: int
) -> dict[str, np.ndarray]:
    """Right-padded SFT arrays of (judge prompt -> verdict + EOS): tokens int32[N, length],
    attention bool[N, length] and loss_mask bool[N, length] (True on the verdict and EOS)."""
    tokens = np.full((len(pairs), length), tokenizer.pad_id, np.int32)
    attention = np.zeros((len(pairs), length), bool)
    loss_mask = np.zeros((len(pairs), length), bool)
    for i, pair in enumerate(pairs):
        prompt, _ = encode_judge_prompt(tokenizer, pair, config)
        target = [*tokenizer.encode(verdict_text(pair["correct"], config)), tokenizer.eos_id]
        ids = prompt + target
        if len(ids) > length:
            raise ValueError(f"judge example {i} has {len(ids)} tokens, more than {length}")
        tokens[i, : len(ids)] = ids
        attention[i, : len(ids)] = True
        loss_mask[i, len(prompt) : len(ids)] = True
    return {"tokens": tokens, "attention": attention, "loss_mask": loss_mask}


@dataclasses.dataclass(frozen=True)
class TrainJudgeConfig:
    """How the tiny judge is trained: model width/depth, steps, batch, learning rate, data seed,
    number of training pairs, held-out pairs used to measure agreement."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.1
    seed: int = 0
    num_train: int = 100000
    num_eval: int = 512
    seq_len: int = 16

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainJudgeConfig.{name}: expected >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError("TrainJudgeConfig.hidden_size must be divisible by num_heads")


def judge_model_config(vocab_size: int, train: TrainJudgeConfig) -> ModelConfig:
    """A Qwen2-style dense model sized by `train`, positions up to 128."""
    head_dim = train.hidden_size // train.num_heads
    return ModelConfig(
        family="qwen2",
        vocab_size=vocab_size,
        hidden_size=train.hidden_size,
        num_layers=train.num_layers,
        num_heads=train.num_heads,
        num_kv_heads=train.num_heads,
        head_dim=head_dim,
        intermediate_size=4 * train.hidden_size,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        attention_bias=True,
        max_position_embeddings=128,
    )


@dataclasses.dataclass
class TrainedJudge:
    """`train_tiny_judge`'s result: the model, its tokenizer, the judge config, the final
    training loss, the held-out agreement with the truth, the training seconds and the
    training settings (None when the judge was not trained by `train_tiny_judge`)."""

    model: Transformer
    tokenizer: DemoTokenizer
    config: JudgeConfig
    loss: float
    agreement: float
    unparseable: int
    seconds: float
    train: TrainJudgeConfig | None = None


def train_tiny_judge(
    train: TrainJudgeConfig | None = None, config: JudgeConfig | None = None
) -> TrainedJudge:
    """SFTs a fresh tiny model on (judge prompt -> verdict) pairs, then measures its agreement
    with the truth on `train.num_eval` held-out pairs through `Judge.score` (the compiled greedy
    sampler and the text verdict parser). Defaults: `TrainJudgeConfig()`, `JudgeConfig()`."""
    train = train or TrainJudgeConfig()
    config = config or JudgeConfig()
    tokenizer = judge_tokenizer(config)
    model_cfg = judge_model_config(tokenizer.vocab_size, train)
    model = Transformer(model_cfg, rngs=nnx.Rngs(train.seed))
    data = encode_examples(
        verdict_pairs(train.seed, train.num_train, "train"), tokenizer, config, train.seq_len
    )
    optimizer = optax.adamw(
        optax.warmup_cosine_decay_schedule(
            0.0,
            train.learning_rate,
            min(50, train.steps // 4),
            max(train.steps, 2),
            train.learning_rate * 0.05,
        ),
        weight_decay=train.weight_decay,
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, tokens, attention, loss_mask):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest)
            logits = m.forward(tokens, attention_mask=attention).logits
            return next_token_loss(logits, tokens, loss_mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(train.seed)
    began = time.perf_counter()
    loss = jnp.zeros(())
    for _ in range(train.steps):
        idx = rng.integers(0, train.num_train, train.batch_size)
        params, opt_state, loss = step(
            params, opt_state, data["tokens"][idx], data["attention"][idx], data["loss_mask"][idx]
        )
    loss = float(loss)
    seconds = time.perf_counter() - began
    model = nnx.merge(graphdef, params, rest)
    held_out = verdict_pairs(train.seed, train.num_eval, "test")
    judge = Judge.from_model(
        model, tokenizer, dataclasses.replace(config, batch_size=64), name="tiny_judge"
    )
    scores, info = judge.score(held_out)
    truth = np.asarray([p["correct"] for p in held_out])
    agreement = float(np.mean((scores > 0.5) == truth))
    return TrainedJudge(
        model, tokenizer, config, loss, agreement, int(np.sum(info["unparseable"])), seconds, train
    )


def save_judge(trained: TrainedJudge, out: str) -> dict[str, Any]:
    """Writes the judge to `out`: the model in Hugging Face layout (config.json, safetensors),
    its tokenizer (`judge_tokenizer.json`), its `JudgeConfig` (`judge_config.json`, read by
    `Judge.load`) and `judge_report.json` (loss, held-out agreement, seconds, and under "train"
    the `TrainJudgeConfig` it was trained with, when known). Returns the report."""
    from r1.models import hf  # noqa: PLC0415 - only needed when saving

    hf.save(trained.model, path=out)
    trained.tokenizer.save(os.path.join(out, TOKENIZER_FILE))
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        json.dump(dataclasses.asdict(trained.config), f, indent=2)
    report = {
        "loss": trained.loss,
        "held_out_agreement": trained.agreement,
        "held_out_unparseable": trained.unparseable,
        "train_seconds": trained.seconds,
    }
    if trained.train is not None:
        report["train"] = dataclasses.asdict(trained.train)
    with open(os.path.join(out, "judge_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def with_word_answers(
    rows: Sequence[dict[str, Any]], fraction: float, suffix: str = "_words"
) -> list[dict[str, Any]]:
    """The judge's slice of a procedural dataset: a stable `fraction` of rows (by a hash of their
    id) whose integer answer is in 0..99 get it written in words ("forty-six"), the digits kept
    in "answer_digits" and `suffix` appended to "task" (no rule checker grades that task; the
    judge does). Other rows are returned unchanged (copies)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"answer_words_fraction: expected a value in [0, 1], got {fraction}")
    out = []
    for row in rows:
        row = dict(row)
        digest = hashlib.blake2b(f"words\x00{row.get('id', '')}".encode(), digest_size=8).digest()
        chosen = int.from_bytes(digest, "little") / 2.0**64 < fraction
        answer = str(row.get("answer", "")).strip()
        if chosen and answer.isdigit() and int(answer) <= MAX_VALUE:
            row["answer_digits"] = answer
            row["answer"] = number_to_words(int(answer))
            row["task"] = f"{row.get('task', '')}{suffix}"
        out.append(row)
    return out

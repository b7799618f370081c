"""The judge on the host: `Judge` (load, score rows with the compiled sampler) and the text
rewards ``judge`` and ``judge_verdict`` (`r1.judge`).

The two text rewards are `r1.rewards.Reward` objects, not registry entries (the registry holds
rules only): use them in a spec as ``RewardTerm("judge", reward=JUDGE_REWARD, kwargs={"judge":
judge})`` / ``RewardTerm("judge_verdict", reward=JUDGE_VERDICT)``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from r1 import sharding
from r1.judge.config import (
    CONFIG_FILE,
    NO_ANSWER,
    TOKENIZER_FILE,
    UNPARSEABLE,
    JudgeConfig,
    encode_judge_prompt,
    max_prompt_tokens,
    parse_verdict,
)
from r1.judge.graph import JudgeTokens
from r1.rewards.base import Reward, row_field
from r1.rewards.extract import final_answer
from r1.sampling.sampler import SamplingConfig, left_pad, make_sampler


def load_judge_tokenizer(path: str) -> Any:
    """The tokenizer saved with a judge: `path/judge_tokenizer.json` (a demo tokenizer) if
    present, else the Hugging Face `tokenizer.json` of `path`."""
    from r1.data.tokenizers import DemoTokenizer, HFTokenizer  # noqa: PLC0415 - avoid a cycle

    demo = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(demo):
        return DemoTokenizer.load(demo)
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return HFTokenizer.from_file(path)
    raise FileNotFoundError(
        f"judge: {path} holds neither {TOKENIZER_FILE} nor tokenizer.json; pass a tokenizer"
    )


def load_judge_config(path: str) -> JudgeConfig:
    """The `JudgeConfig` saved with a judge (`path/judge_config.json`), else the default."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(file):
        return JudgeConfig()
    try:
        with open(file) as f:
            values = json.load(f)
        return JudgeConfig(**values)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"judge: {file} is not a JudgeConfig: {err}") from err


class Judge:
    """A judge model on the host: `score(rows) -> (scores float32[B], info)`.

    Build it with `Judge.load(path, config)` (a Hugging Face directory r1 loads; a bad path,
    checkpoint or tokenizer raises here, at start) or `Judge.from_model(model, tokenizer,
    config, name)` (e.g. the reference policy). Rows are mappings with "reference",
    "prediction" (None: no answer, score 0, not sent to the judge) and optionally "question",
    "reasoning".
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer: Any,
        config: JudgeConfig,
        *,
        name: str,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.config, self.tokenizer, self.name, self.mesh = config, tokenizer, name, mesh
        self.model = model
        model_cfg = model.config
        if tokenizer.vocab_size > model_cfg.vocab_size:
            raise ValueError(
                f"judge {name}: tokenizer has {tokenizer.vocab_size} ids but the model's "
                f"vocab_size is {model_cfg.vocab_size}"
            )
        self.tokens = JudgeTokens.from_tokenizer(tokenizer, config)
        self.prompt_length = max_prompt_tokens(tokenizer, config)
        needed = self.prompt_length + config.max_new_tokens
        if needed > model_cfg.max_position_embeddings:
            raise ValueError(
                f"judge {name}: prompts of up to {self.prompt_length} tokens plus "
                f"max_new_tokens={config.max_new_tokens} exceed the model's "
                f"max_position_embeddings={model_cfg.max_position_embeddings}; lower "
                "max_field_tokens or max_new_tokens"
            )
        graphdef, self._state = nnx.split(model)
        sampling = SamplingConfig(
            max_new_tokens=config.max_new_tokens,
            greedy=True,
            eos_ids=(int(tokenizer.eos_id),),
            pad_id=int(tokenizer.pad_id),
        )
        jit_kwargs = {}
        if mesh is not None:
            self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            jit_kwargs["out_shardings"] = self._replicated
        self._sample = make_sampler(graphdef, sampling, **jit_kwargs)
        self._key = jax.random.key(0)

    @classmethod
    def from_model(
        cls,
        model: nnx.Module,
        tokenizer: Any,
        config: JudgeConfig,
        name: str,
        mesh: jax.sharding.Mesh | None = None,
    ) -> Judge:
        """A judge from a model in memory (e.g. the reference policy)."""
        return cls(model, tokenizer, config, name=name, mesh=mesh)

    @classmethod
    def load(
        cls,
        path: str,
        config: JudgeConfig | None = None,
        *,
        tokenizer: Any = None,
        mesh: jax.sharding.Mesh | None = None,
        abstract: bool = False,
        **model_overrides: Any,
    ) -> Judge:
        """Loads the judge at `path` (Hugging Face layout; `load_judge_tokenizer` unless a
        tokenizer is given) onto `mesh` (default: all devices). config: default the
        `judge_config.json` saved with the judge, else `JudgeConfig()`. abstract: the model
        without weights (`r1.models.hf.load_abstract`; ahead-of-time compilation). Errors name
        the path."""
        from r1.models import hf  # noqa: PLC0415 - heavy import kept local

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"judge: {path} is not a directory (a judge checkpoint)")
        if config is None:
            config = load_judge_config(path)
        tokenizer = tokenizer if tokenizer is not None else load_judge_tokenizer(path)
        mesh = mesh if mesh is not None else sharding.make_mesh()
        try:
            if abstract:
                _, model = hf.load_abstract(path, **model_overrides)
            else:
                _, model = hf.load(path, mesh=mesh, **model_overrides)
        except (FileNotFoundError, ValueError, KeyError, OSError) as err:
            raise ValueError(f"judge: cannot load the judge model at {path}: {err}") from err
        return cls(model, tokenizer, config, name=path, mesh=mesh)

    @property
    def identity(self) -> dict[str, Any]:
        """Who judged: the model name/path and a hash of the judging configuration."""
        digest = hashlib.sha256(repr(self.config).encode()).hexdigest()[:12]
        return {"model": self.name, "config": digest, "verdict_format": self.config.verdict_format}

    def __repr__(self) -> str:
        return f"Judge({self.name!r}, {self.config!r})"

    def _put(self, array: np.ndarray) -> Any:
        if self.mesh is None:
            return array
        return jax.make_array_from_callback(array.shape, self._replicated, lambda i: array[i])

    def _generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy verdict ids (EOS removed) for up to `batch_size` prompts."""
        n, size = len(prompts), self.config.batch_size
        padded = prompts + [prompts[-1]] * (size - n)
        tokens, mask = left_pad(padded, self.prompt_length, int(self.tokenizer.pad_id))
        args = (self._put(tokens), self._put(mask), self._key)
        if self.mesh is None:
            out = self._sample(self._state, *args)
        else:
            with sharding.use_mesh(self.mesh):
                out = self._sample(self._state, *args)
        out_tokens, out_mask = jax.device_get((out.tokens, out.mask))
        keep = out_mask & (out_tokens != int(self.tokenizer.eos_id))
        return [out_tokens[r][keep[r]].tolist() for r in range(n)]

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, dict[str, Any]]:
        """Scores float32[B] in [0, 1] and info: "verdicts" (decoded text, None when not
        judged), "reasons" ("" / "no_answer" / an `UNPARSEABLE` reason), "unparseable"
        bool[B], "verdict_tokens" (ids), "metrics" (counts: judged, unparseable, no_answer,
        truncated_fields)."""
        n = len(rows)
        scores = np.zeros(n, np.float32)
        reasons = [""] * n
        verdicts: list[str | None] = [None] * n
        verdict_ids: list[list[int] | None] = [None] * n
        todo, prompts, truncated = [], [], 0
        for i, row in enumerate(rows):
            if row.get("prediction") is None:
                reasons[i] = NO_ANSWER
                continue
            ids, cut = encode_judge_prompt(self.tokenizer, row, self.config)
            truncated += cut
            todo.append(i)
            prompts.append(ids)
        size = self.config.batch_size
        for lo in range(0, len(todo), size):
            for i, ids in zip(todo[lo : lo + size], self._generate(prompts[lo : lo + size])):
                verdict_ids[i] = ids
                verdicts[i] = self.tokenizer.decode(ids)
                scores[i], reasons[i] = parse_verdict(verdicts[i], self.config)
        unparseable = np.asarray([r in UNPARSEABLE for r in reasons], bool).reshape(-1)
        info = {
            "verdicts": verdicts,
            "reasons": reasons,
            "unparseable": unparseable,
            "verdict_tokens": verdict_ids,
            "metrics": {
                "judge/judged": len(todo),
                "judge/unparseable": int(unparseable.sum()),
                "judge/no_answer": n - len(todo),
                "judge/truncated_fields": int(truncated),
            },
        }
        return scores, info


# ----------------------------------------------------------------------------- text rewards
def judge_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    judge: Judge,
    answer: Sequence[Any],
    question: Sequence[Any] | None = None,
    **_: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: `judge.score` of (reference = `answer`, prediction = the completion's final
    answer); reasons "no_answer" or the unparseable reason. kwargs: judge (a `Judge`)."""
    batch = len(completions)
    answers = row_field({"answer": answer}, "answer", batch, "judge")
    questions = [None] * batch if question is None else list(question)
    rows = []
    for completion, ref, q in zip(completions, answers, questions):
        pred = final_answer(completion) if isinstance(completion, str) else None
        rows.append(
            {"reference": ref, "prediction": None if pred is None else pred.strip(), "question": q}
        )
    scores, info = judge.score(rows)
    return scores, list(info["reasons"])


def judge_verdict(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    judge_score: Sequence[float],
    judge_reason: Sequence[str] | None = None,
    **_: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: `judge_score` per row, with `judge_reason` ("" when none) as the reasons."""
    batch = len(completions)
    scores = row_field({"judge_score": judge_score}, "judge_score", batch, "judge_verdict")
    reasons = [""] * batch if judge_reason is None else [str(r) for r in judge_reason]
    if len(reasons) != batch:
        raise ValueError(f"judge_verdict: {len(reasons)} reasons for {batch} rows")
    return np.asarray(scores, np.float32).reshape(-1), reasons


JUDGE_REWARD = Reward(
    "judge",
    "text",
    judge_reward,
    fields=("answer",),
    doc="a judge model's verdict on the final answer",
    reasons=(NO_ANSWER, *UNPARSEABLE),
)
JUDGE_VERDICT = Reward(
    "judge_verdict",
    "text",
    judge_verdict,
    fields=("judge_score", "judge_reason"),
    doc="scores a caller already got from `Judge.score`, passed through with their reasons",
    reasons=(NO_ANSWER, *UNPARSEABLE),
)

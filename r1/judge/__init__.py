"""A generative reward: a judge model reads (reference, prediction) and writes a verdict.

DeepSeek-R1's stage 3 graded answers that no rule can check "by using a generative reward model,
feeding the ground truth and the model's prediction into DeepSeek-V3 for judgment". Here the
judge is any r1 `Transformer` (a Hugging Face directory r1 loads, a checkpoint the project
trained, or the reference policy itself) and the verdict is parsed by a fixed rule:

* **Prompt.** `JudgeConfig.template` with the fields ``{reference}``, ``{prediction}`` (both
  required), ``{question}`` and ``{reasoning}``. Literal parts and fields are tokenised
  separately and concatenated (`encode_judge_prompt`), each field cut to its first
  `max_field_tokens` tokens, so the host path and the in-graph path build the same ids.
* **Verdict.** ``verdict_format="tags"``: exactly one occurrence of `correct_tag` (score 1) or
  `incorrect_tag` (score 0). ``"score"``: exactly one occurrence of ``score_pattern`` with an
  integer ``0..max_score`` (``[[7]]`` -> 0.7). Anything else (empty, no verdict, several
  verdicts, longer than `max_verdict_chars`, not text) is *unparseable*: score 0, counted,
  never raised (`parse_verdict`, `parse_verdict_tokens`).
* **Host path.** `Judge.score(rows)`: greedy decoding of at most `max_new_tokens` tokens with the
  compiled sampler (`r1.sampling.sampler.make_sampler`), `batch_size` rows per call, prompts
  left-padded to one fixed length (one compilation), then `parse_verdict` on the decoded text.
  As text rewards (not in the rule registry): `JUDGE_REWARD` ``judge`` (extracts the
  completion's final answer, calls a `Judge`) and `JUDGE_VERDICT` ``judge_verdict`` (passes
  through scores a caller already got from a judge).
* **In-graph path.** `judge_in_graph` / `judge_completions_in_graph`: the same prompt built
  from token arrays with static shapes (`build_judge_prompt`), `sample` with greedy decoding,
  and `parse_verdict_tokens` on the verdict ids: pure and jittable, so a GRPO step can run the
  judge inside its one compiled program with the judge's parameters as a frozen input
  (`make_judge_reward`). It needs verdict strings (and the template's literal parts) that
  tokenise the same in any context, e.g. whole-string or special tokens, and a judge vocabulary
  in which the policy's completion ids mean the same text (the judge tokenizer extends the
  policy's). See docs/judge.md.

The code is in `config` (settings, prompts, text verdicts), `graph` (in-graph judging) and
`host` (`Judge` and the text rewards); every public name is re-exported here. `data` (synthetic
verdicts, the tiny judge's training) is imported on its own: `from r1.judge import data`. In a
GRPO run the judge is a *model* `RewardTerm` built by `r1.rl.model_rewards`.
"""

from __future__ import annotations

from r1.judge.config import (
    CONFIG_FILE,
    DEFAULT_TEMPLATE,
    FIELDS,
    NO_ANSWER,
    REQUIRED_FIELDS,
    TOKENIZER_FILE,
    UNPARSEABLE,
    VERDICT_FORMATS,
    JudgeConfig,
    Segment,
    encode_judge_prompt,
    max_prompt_tokens,
    parse_verdict,
    parse_verdicts,
    render_judge_prompts,
    verdict_strings,
    verdict_values,
)
from r1.judge.graph import (
    JudgeRewardFn,
    JudgeTokens,
    build_judge_prompt,
    judge_completions_in_graph,
    judge_in_graph,
    make_judge_reward,
    parse_verdict_tokens,
    tag_span,
)
from r1.judge.host import (
    JUDGE_REWARD,
    JUDGE_VERDICT,
    Judge,
    judge_reward,
    judge_verdict,
    load_judge_config,
    load_judge_tokenizer,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_TEMPLATE",
    "FIELDS",
    "JUDGE_REWARD",
    "JUDGE_VERDICT",
    "Judge",
    "JudgeConfig",
    "JudgeRewardFn",
    "JudgeTokens",
    "NO_ANSWER",
    "REQUIRED_FIELDS",
    "Segment",
    "TOKENIZER_FILE",
    "UNPARSEABLE",
    "VERDICT_FORMATS",
    "build_judge_prompt",
    "encode_judge_prompt",
    "judge_completions_in_graph",
    "judge_in_graph",
    "judge_reward",
    "judge_verdict",
    "load_judge_config",
    "load_judge_tokenizer",
    "make_judge_reward",
    "max_prompt_tokens",
    "parse_verdict",
    "parse_verdict_tokens",
    "parse_verdicts",
    "render_judge_prompts",
    "tag_span",
    "verdict_strings",
    "verdict_values",
]

"""The generative reward (judge): config, prompts, verdict parsing (text and ids, hostile
output), the host judge (batched == row by row, loading errors, save/load), the in-graph judge
(same prompt ids and verdicts as the host path; a GRPO-like step with the judge lowers to one
program and runs on the 8-device mesh) and the tiny trained judge's agreement with the truth."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import judge as J
from r1 import rewards, sharding
from r1.judge import data as JD
from r1.models import hf
from r1.models.transformer import Transformer
from r1.rewards import RewardSpec, RewardTerm
from r1.rewards.extract import answer_content
from r1.rewards.tokens import TagIds, encode_batch
from r1.sampling.sampler import SamplingConfig, left_pad, sample

CONFIG = J.JudgeConfig(max_field_tokens=8, max_new_tokens=4, batch_size=4)
TOKENIZER = JD.judge_tokenizer(CONFIG)


def _judge_model(seed: int = 0) -> Transformer:
    cfg = JD.judge_model_config(TOKENIZER.vocab_size, JD.TrainJudgeConfig(num_layers=1))
    return Transformer(cfg, rngs=nnx.Rngs(seed))


ROWS = [
    {"reference": "forty-six", "prediction": "46"},
    {"reference": "7", "prediction": "seven"},
    {"reference": "twelve", "prediction": "13"},
    {"reference": "ninety", "prediction": "90", "question": "45+45"},
    {"reference": "3", "prediction": None},
    {"reference": "a very long reference answer", "prediction": "  5  "},
]


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"template": "{reference} vs {answer}"}, "unknown placeholder"),
        ({"template": "Only {reference}"}, "prediction"),
        ({"template": "{reference} {prediction} {reference}"}, "twice"),
        ({"template": "{reference!r} {prediction}"}, "unknown placeholder"),
        ({"verdict_format": "stars"}, "verdict_format"),
        ({"correct_tag": "OK", "incorrect_tag": "NOT OK"}, "inside"),
        ({"verdict_format": "score", "score_pattern": "Score: {score}"}, "inside"),
        ({"verdict_format": "score", "score_pattern": "[[x]]"}, "score_pattern"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        J.JudgeConfig(**kwargs)


def test_render_and_segmentwise_encoding():
    texts = J.render_judge_prompts(ROWS[:2], CONFIG)
    assert texts[0] == "Reference: forty-six\nPrediction: 46\nVerdict: "
    ids, cut = J.encode_judge_prompt(TOKENIZER, ROWS[0], CONFIG)
    assert not cut and ids == TOKENIZER.encode(texts[0])
    assert TOKENIZER.decode(ids) == texts[0]
    # Fields are cut to max_field_tokens ids and flagged.
    ids, cut = J.encode_judge_prompt(TOKENIZER, ROWS[5], CONFIG)
    assert cut and TOKENIZER.decode(ids).startswith("Reference: a very l\n")
    assert len(ids) <= J.max_prompt_tokens(TOKENIZER, CONFIG)
    # An optional field absent from the row renders as "".
    with_q = dataclasses.replace(CONFIG, template="Q: {question} R: {reference} P: {prediction}")
    assert J.render_judge_prompts([ROWS[0]], with_q) == ["Q:  R: forty-six P: 46"]


# ----------------------------------------------------------------------------- parsing
HOSTILE = [
    "",
    "   \n\t",
    "[[CORRECT]] [[INCORRECT]]",
    "[[CORRECT]][[CORRECT]]",
    "x" * 5000 + "[[CORRECT]]",
    "正确",
    "Die Antwort ist richtig.",
    "[[correct]]",
    "[[CORRECT",
    "\udc80\udcff garbage",
    None,
    b"[[CORRECT]]",
    12,
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_verdicts_score_zero_and_count(text):
    score, reason = J.parse_verdict(text, CONFIG)
    assert score == 0.0 and reason in J.UNPARSEABLE
    scores, unparseable, reasons = J.parse_verdicts([text, "[[CORRECT]]"], CONFIG)
    assert scores.tolist() == [0.0, 1.0] and unparseable.tolist() == [True, False]
    assert reasons[0] == reason and reasons[1] == ""


def test_parse_verdict_rules():
    assert J.parse_verdict("The numbers agree. [[CORRECT]]", CONFIG) == (1.0, "")
    assert J.parse_verdict("[[INCORRECT]]", CONFIG) == (0.0, "")
    assert J.parse_verdict("[[CORRECT]] [[INCORRECT]]", CONFIG) == (0.0, "several_verdicts")
    assert J.parse_verdict("", CONFIG) == (0.0, "empty")
    assert J.parse_verdict("y" * 600 + "[[CORRECT]]", CONFIG) == (0.0, "too_long")
    assert J.parse_verdict("正确", CONFIG) == (0.0, "no_verdict")
    score = J.JudgeConfig(verdict_format="score")
    assert J.parse_verdict("I give it [[7]]", score) == (pytest.approx(0.7), "")
    assert J.parse_verdict("[[10]]", score) == (1.0, "")
    assert J.parse_verdict("[[11]]", score) == (0.0, "no_verdict")
    assert J.parse_verdict("[[7]] or [[8]]", score) == (0.0, "several_verdicts")


def test_token_parser_matches_text_parser():
    texts = [
        "[[CORRECT]]",
        "ok [[INCORRECT]]",
        "[[CORRECT]][[INCORRECT]]",
        "[[CORRECT]] [[CORRECT]]",
        "",
        "正确",
        "[[CORR",
        "x [[INCORRECT]] y",
    ]
    tokens, mask = encode_batch(TOKENIZER, texts, 24)
    judge_tokens = J.JudgeTokens.from_tokenizer(TOKENIZER, CONFIG)
    scores, unparseable = jax.jit(J.parse_verdict_tokens, static_argnums=2)(
        tokens, mask, judge_tokens
    )
    want_scores, want_unparseable, _ = J.parse_verdicts(texts, CONFIG)
    np.testing.assert_array_equal(np.asarray(scores), want_scores)
    np.testing.assert_array_equal(np.asarray(unparseable), want_unparseable)
    # Score format on ids (verdicts spanning several byte ids).
    score_cfg = J.JudgeConfig(verdict_format="score")
    score_tok = JD.judge_tokenizer(score_cfg)
    texts = ["[[7]]", "[[10]]", "[[1]] [[0]]", "[[11]]", "so [[0]]"]
    tokens, mask = encode_batch(score_tok, texts, 16)
    got, bad = J.parse_verdict_tokens(
        jnp.asarray(tokens), jnp.asarray(mask), J.JudgeTokens.from_tokenizer(score_tok, score_cfg)
    )
    want, want_bad, _ = J.parse_verdicts(texts, score_cfg)
    np.testing.assert_allclose(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(bad), want_bad)


# ----------------------------------------------------------------------------- in-graph prompt
def _scattered(texts, width, seed):
    """Each text's ids at random (sorted) positions of a [B, width] row, junk elsewhere."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 200, size=(len(texts), width)).astype(np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, t in enumerate(texts):
        ids = TOKENIZER.encode(t)
        pos = np.sort(rng.choice(width, size=len(ids), replace=False))
        tokens[i, pos] = ids
        mask[i, pos] = True
    return jnp.asarray(tokens), jnp.asarray(mask)


def test_build_judge_prompt_equals_host_encoding():
    rows = [r for r in ROWS if r["prediction"] is not None]
    refs = [r["reference"] for r in rows]
    preds = [r["prediction"].strip() for r in rows]
    judge_tokens = J.JudgeTokens.from_tokenizer(TOKENIZER, CONFIG)
    fields = {"reference": _scattered(refs, 40, 0), "prediction": _scattered(preds, 6, 1)}
    tokens, mask = jax.jit(J.build_judge_prompt, static_argnums=0)(judge_tokens, fields)
    length = judge_tokens.prompt_length()
    assert tokens.shape == (len(rows), length) == mask.shape
    assert length == J.max_prompt_tokens(TOKENIZER, CONFIG)
    want = [J.encode_judge_prompt(TOKENIZER, r, CONFIG)[0] for r in rows]
    want_tokens, want_mask = left_pad(want, length, TOKENIZER.pad_id)
    np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(mask), want_mask)
    with pytest.raises(ValueError, match="prediction"):
        J.build_judge_prompt(judge_tokens, {"reference": fields["reference"]})


@pytest.mark.parametrize(
    "text",
    [
        " <think>4+2=6</think> <answer> 6 </answer>",
        "<answer>1</answer> then <answer>forty two</answer>",
        "<answer>unclosed",
        "no tags",
        "<answer></answer>",
        "<answer>  </answer>",
        "</answer>5<answer>7</answer>",
    ],
)
def test_tag_span_is_the_stripped_answer(text):
    tok = JD.judge_tokenizer(CONFIG)
    ids = TagIds.from_tokenizer(tok)
    tokens, mask = encode_batch(tok, [text], 48)
    span, found = J.tag_span(
        jnp.asarray(tokens), jnp.asarray(mask), ids.tags[2], ids.tags[3], ids.whitespace
    )
    content = answer_content(text)
    assert bool(found[0]) == (content is not None)
    got = tok.decode(np.asarray(tokens)[0][np.asarray(span)[0]].tolist())
    assert got == ("" if content is None else content.strip())


# ----------------------------------------------------------------------------- host judge
def test_batched_scoring_equals_row_by_row_and_counts():
    judge = J.Judge.from_model(_judge_model(), TOKENIZER, CONFIG, name="untrained")
    rows = ROWS * 2  # 12 rows: three sampler calls of 4, the last one padded
    scores, info = judge.score(rows)
    assert scores.dtype == np.float32 and scores.shape == (12,)
    assert info["reasons"][4] == J.NO_ANSWER and info["verdicts"][4] is None
    metrics = info["metrics"]
    assert metrics["judge/judged"] == 10 and metrics["judge/no_answer"] == 2
    assert metrics["judge/truncated_fields"] == 2
    assert metrics["judge/unparseable"] == int(info["unparseable"].sum())
    for i, row in enumerate(rows):
        one, one_info = judge.score([row])
        assert one[0] == scores[i]
        assert one_info["verdicts"][0] == info["verdicts"][i]
        assert one_info["reasons"][0] == info["reasons"][i]


def test_judge_reward_in_a_reward_spec():
    judge = J.Judge.from_model(_judge_model(), TOKENIZER, CONFIG, name="untrained")
    # The judge is a model reward: its text rewards are not in the rule registry.
    assert "judge" not in rewards.names() and "judge_verdict" not in rewards.names()
    spec = RewardSpec.from_config(
        [RewardTerm("judge", 1.0, {"judge": judge}, reward=J.JUDGE_REWARD)]
    )
    completions = ["<think>x</think> <answer>46</answer>", "no answer here"]
    result = spec(["p", "p"], completions, answer=["forty-six", "3"])
    direct, info = judge.score(
        [{"reference": "forty-six", "prediction": "46"}, {"reference": "3", "prediction": None}]
    )
    np.testing.assert_array_equal(result.breakdown["judge"], direct)
    assert result.failures.get("judge/no_answer") == 1
    passed = RewardSpec.from_config([RewardTerm("judge_verdict", 1.0, reward=J.JUDGE_VERDICT)])(
        ["p", "p"], ["a", "b"], judge_score=[1.0, 0.0], judge_reason=["", "no_verdict"]
    )
    assert passed.total.tolist() == [1.0, 0.0]
    assert passed.failures == {"judge_verdict/no_verdict": 1}


def test_judge_load_errors_are_clear_at_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        J.Judge.load(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="judge_tokenizer.json"):
        J.Judge.load(str(empty))
    with pytest.raises(ValueError, match="cannot load the judge model"):
        J.Judge.load(str(empty), tokenizer=TOKENIZER)
    small = tmp_path / "small"
    hf.save(
        Transformer(
            JD.judge_model_config(200, JD.TrainJudgeConfig(num_layers=1)), rngs=nnx.Rngs(0)
        ),
        path=str(small),
    )
    TOKENIZER.save(str(small / J.TOKENIZER_FILE))
    with pytest.raises(ValueError, match="vocab_size"):
        J.Judge.load(str(small))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        J.Judge.from_model(
            _judge_model(), TOKENIZER, J.JudgeConfig(max_field_tokens=100), name="long"
        )
    (small / J.CONFIG_FILE).write_text(json.dumps({"template": "{oops}"}))
    with pytest.raises(ValueError, match="unknown placeholder"):
        J.load_judge_config(str(small))


def test_save_and_load_round_trip(tmp_path):
    model = _judge_model(seed=3)
    settings = JD.TrainJudgeConfig(steps=7, batch_size=5, learning_rate=1e-3)
    trained = JD.TrainedJudge(model, TOKENIZER, CONFIG, 0.0, 0.0, 0, 0.0, settings)
    report = JD.save_judge(trained, str(tmp_path))
    assert os.path.exists(tmp_path / "config.json")
    saved = json.loads((tmp_path / "judge_report.json").read_text())
    assert saved == report and saved["train"] == dataclasses.asdict(settings)
    untrained = tmp_path / "untrained"
    report = JD.save_judge(dataclasses.replace(trained, train=None), str(untrained))
    assert "train" not in report
    loaded = J.Judge.load(str(tmp_path))
    assert loaded.config == CONFIG and loaded.identity["model"] == str(tmp_path)
    memory = J.Judge.from_model(model, TOKENIZER, CONFIG, name="memory")
    rows = [r for r in ROWS if r["prediction"] is not None]
    assert loaded.score(rows)[1]["verdicts"] == memory.score(rows)[1]["verdicts"]


# ----------------------------------------------------------------------------- in-graph judge
def test_in_graph_judge_equals_host_judge():
    """Same completions through the host path (text reward `judge`) and the in-graph path:
    the same verdict ids, scores and unparseable flags."""
    model = _judge_model(seed=1)
    judge = J.Judge.from_model(model, TOKENIZER, CONFIG, name="untrained")
    completions = [
        " <think>40+6</think> <answer>46</answer>",
        "<answer> 7 </answer>",
        "no answer",
        "<think>x</think><answer>13</answer>",
    ]
    references = ["forty-six", "seven", "3", "twelve"]
    ids = TagIds.from_tokenizer(TOKENIZER)
    judge_tokens = J.JudgeTokens.from_tokenizer(TOKENIZER, CONFIG)
    comp, cmask = encode_batch(TOKENIZER, completions, 48)
    ref, rmask = encode_batch(TOKENIZER, references, 12)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, comp, cmask, ref, rmask):
        out = J.judge_completions_in_graph(
            nnx.merge(graphdef, state),
            comp,
            cmask,
            ref,
            rmask,
            judge_tokens=judge_tokens,
            tag_ids=ids,
            max_new_tokens=CONFIG.max_new_tokens,
        )
        sampled = sample(
            nnx.merge(graphdef, state),
            out["prompt_tokens"],
            out["prompt_mask"],
            jax.random.key(0),
            SamplingConfig(
                max_new_tokens=CONFIG.max_new_tokens,
                greedy=True,
                eos_ids=(TOKENIZER.eos_id,),
                pad_id=TOKENIZER.pad_id,
            ),
        )
        return out, sampled.tokens, sampled.mask

    out, vtokens, vmask = run(state, comp, cmask, ref, rmask)
    host_scores, reasons = J.judge_reward([""] * 4, completions, judge=judge, answer=references)
    _, info = judge.score(
        [
            {
                "reference": r,
                "prediction": None if answer_content(c) is None else answer_content(c).strip(),
            }
            for r, c in zip(references, completions)
        ]
    )
    np.testing.assert_array_equal(np.asarray(out["scores"]), host_scores)
    assert np.asarray(out["no_answer"]).tolist() == [r == J.NO_ANSWER for r in reasons]
    assert np.asarray(out["unparseable"]).tolist() == [r in J.UNPARSEABLE for r in reasons]
    keep = np.asarray(vmask) & (np.asarray(vtokens) != TOKENIZER.eos_id)
    for i, want in enumerate(info["verdict_tokens"]):
        if want is not None:
            assert np.asarray(vtokens)[i][keep[i]].tolist() == want


def _grpo_like(policy_graphdef, judge_graphdef, judge_tokens, tag_ids, group):
    """sample G completions from the policy -> judge reward in-graph -> group advantages ->
    a policy-gradient loss and its gradient: one function of (policy, judge state, batch)."""
    reward_fn = J.make_judge_reward(judge_graphdef, judge_tokens, tag_ids, max_new_tokens=4)
    sampling = SamplingConfig(max_new_tokens=6, num_samples=group, temperature=1.0)

    def step(policy_params, judge_state, batch):
        policy = nnx.merge(policy_graphdef, policy_params)
        rollout = sample(
            policy, batch["prompt_tokens"], batch["prompt_mask"], jax.random.key(1), sampling
        )
        fields = {
            k: jnp.repeat(batch[k], group, axis=0)
            for k in ("judge_reference_tokens", "judge_reference_mask")
        }
        rewards, parts = reward_fn(
            rollout.tokens, rollout.mask, rollout.truncated, fields, judge_state
        )
        by_group = rewards.reshape(-1, group)
        adv = (by_group - by_group.mean(axis=1, keepdims=True)).reshape(-1)

        def loss_fn(p):
            model = nnx.merge(policy_graphdef, p)
            tokens = jnp.concatenate(
                [jnp.repeat(batch["prompt_tokens"], group, axis=0), rollout.tokens], axis=1
            )
            logits = model(tokens)[:, -rollout.tokens.shape[1] - 1 : -1]
            logp = jax.nn.log_softmax(logits, axis=-1)
            picked = jnp.take_along_axis(logp, rollout.tokens[..., None], axis=-1)[..., 0]
            return -jnp.mean(jnp.sum(picked * rollout.mask, axis=1) * adv)

        loss, grads = jax.value_and_grad(loss_fn)(policy_params)
        return loss, rewards, parts, grads

    return step


def test_grpo_like_step_with_judge_is_one_program_on_the_mesh(devices):
    tok = TOKENIZER
    policy = Transformer(
        JD.judge_model_config(tok.vocab_size, JD.TrainJudgeConfig(num_layers=1)),
        rngs=nnx.Rngs(5),
    )
    judge = _judge_model(seed=2)
    policy_graphdef, policy_params = nnx.split(policy)
    judge_graphdef, judge_state = nnx.split(judge)
    judge_tokens = J.JudgeTokens.from_tokenizer(tok, CONFIG)
    step = _grpo_like(policy_graphdef, judge_graphdef, judge_tokens, TagIds.from_tokenizer(tok), 2)
    questions = ("1+2", "40+6", "9+9", "7+0", "3+3", "50+5", "8+1", "2+2")
    references = ["three", "forty-six", "eighteen", "seven", "six", "55", "nine", "four"]
    ptokens, pmask = left_pad([tok.encode(q) for q in questions], 8, tok.pad_id)
    rtokens, rmask = encode_batch(tok, references, 8)
    batch = {
        "prompt_tokens": jnp.asarray(ptokens),
        "prompt_mask": jnp.asarray(pmask),
        "judge_reference_tokens": jnp.asarray(rtokens),
        "judge_reference_mask": jnp.asarray(rmask),
    }
    lowered = jax.jit(step).lower(policy_params, judge_state, batch)
    text = lowered.as_text()
    assert text.count("func.func public @main") == 1
    assert text.count("stablehlo.while") >= 2  # policy decode and judge decode, one program

    mesh = sharding.make_mesh(devices=devices)
    assert mesh.devices.size == 8
    with sharding.use_mesh(mesh):
        placed_policy = sharding.place_state(policy_params, mesh)
        placed_judge = sharding.place_state(judge_state, mesh)
        placed_batch = {
            k: jax.device_put(v, sharding.named_sharding(("batch", None), v.shape, mesh))
            for k, v in batch.items()
        }
        assert placed_batch["prompt_tokens"].sharding.spec[0] is not None  # rows split 8 ways
        sharded = jax.jit(step)(placed_policy, placed_judge, placed_batch)
    loss, rewards, parts, grads = sharded
    assert np.isfinite(float(loss))
    assert rewards.shape == (16,)
    assert set(parts) == {"judge", "judge/unparseable", "judge/no_answer"}
    assert set(np.unique(np.asarray(rewards))) <= {0.0, 1.0}
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    # Rows without an answer score 0 and are not counted unparseable.
    no_answer = np.asarray(parts["judge/no_answer"]) > 0
    assert np.all(np.asarray(rewards)[no_answer] == 0.0)
    assert np.all(np.asarray(parts["judge/unparseable"])[no_answer] == 0.0)


# ----------------------------------------------------------------------------- trained judge
@pytest.fixture(scope="module")
def trained():
    # Half the default batch: half the training time, measured agreement 0.867 (docs/judge.md).
    return JD.train_tiny_judge(JD.TrainJudgeConfig(batch_size=32))


def test_number_words_round_trip():
    assert JD.number_to_words(0) == "zero" and JD.number_to_words(17) == "seventeen"
    assert JD.number_to_words(46) == "forty-six" and JD.number_to_words(90) == "ninety"
    assert all(JD.words_to_number(JD.number_to_words(v)) == v for v in range(100))
    with pytest.raises(ValueError, match="0..99"):
        JD.number_to_words(100)
    train = JD.verdict_pairs(0, 300, "train")
    test = JD.verdict_pairs(0, 100, "test")
    key = {(p["reference"], p["prediction"]) for p in train}
    assert not key & {(p["reference"], p["prediction"]) for p in test}
    for p in train + test:
        assert p["correct"] == (p["value"] == p["other"])
        assert p["correct"] or p["reference"] != p["prediction"]


@pytest.mark.slow
def test_tiny_trained_judge_agrees_with_the_truth(trained):
    """Held-out (reference, prediction) pairs never trained on; measured agreement: see
    docs/judge.md (the assertion leaves a margin below it)."""
    assert trained.agreement >= AGREEMENT_FLOOR, trained.agreement
    assert trained.train == JD.TrainJudgeConfig(batch_size=32)  # what save_judge records
    held_out = JD.verdict_pairs(7, 64, "test")
    judge = J.Judge.from_model(trained.model, trained.tokenizer, trained.config, name="tiny")
    scores, info = judge.score(held_out)
    truth = np.asarray([p["correct"] for p in held_out])
    assert np.mean((scores > 0.5) == truth) >= AGREEMENT_FLOOR - 0.05
    for i in range(0, 64, 9):
        assert judge.score([held_out[i]])[0][0] == scores[i]


AGREEMENT_FLOOR = 0.82  # measured 0.867 at batch 32 (docs/judge.md)

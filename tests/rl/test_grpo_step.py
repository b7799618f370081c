"""The compiled GRPO step: one program, sharded == single device, beta/mu behaviour, callbacks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.rewards import Reward, RewardSpec, RewardTerm
from r1.rl.grpo import GRPOLossConfig
from r1.rl.step import GRPOConfig, auto_microbatches, grpo_step_fn, make_grpo_step
from r1.sampling.sampler import SamplingConfig, left_pad
from r1.sampling.slots import expected_decode_steps
from r1.train.state import init_train_state

TARGET = 7


class IdTokenizer:
    """Token ids as text (decode joins them with spaces); no EOS, so rewards see every token."""

    eos_id = None

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return " ".join(map(str, ids))


def _target_share(tokens, mask, ids, **fields):
    """Share of generated tokens equal to TARGET."""
    return jnp.sum((tokens == TARGET) & mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)


def _exact(tokens, mask, ids, first, **fields):
    """Exact match of the first token against the per-prompt field `first`."""
    return (tokens[:, 0] == first).astype(jnp.float32)


def spec_of(*terms):
    return RewardSpec(tuple(terms)).compile(IdTokenizer())


RULES = (
    RewardTerm("target_share", reward=Reward("target_share", "token", _target_share)),
    RewardTerm("exact", reward=Reward("exact", "token", _exact, fields=("first",))),
)
# Two jax.numpy rewards fused into the step: total = target share + exact-match bonus.
token_reward = spec_of(*RULES)


def _setup(cfg, *, beta=0.0, mu=1, minibatches=1, eps=0.2, lr=1e-2, group=4, prompts=4):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    optimizer = optax.adam(lr)
    graphdef, state = init_train_state(model, optimizer, seed=0, with_reference=beta > 0)
    config = GRPOConfig(
        group_size=group,
        sampling=SamplingConfig(max_new_tokens=6, num_samples=group, temperature=1.0),
        loss=GRPOLossConfig(beta=beta, eps_low=eps, eps_high=eps),
        num_iterations=mu,
        num_minibatches=minibatches,
        accuracy_reward="exact",
    )
    raw = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]][:prompts]
    tokens, mask = left_pad(raw, 4, 0)
    batch = {
        "prompt_tokens": jnp.asarray(tokens),
        "prompt_mask": jnp.asarray(mask),
        "first": jnp.asarray([TARGET, 3, TARGET, 4][:prompts], jnp.int32),
    }
    return graphdef, state, optimizer, config, batch


def test_step_lowers_to_one_program_and_runs_tiny_moe():
    cfg = testing.tiny_moe_config(bias_update_rate=0.01)
    graphdef, state, optimizer, config, batch = _setup(cfg, beta=0.01)
    step = jax.jit(grpo_step_fn(graphdef, optimizer, config, token_reward, 0.01))
    lowered = step.lower(state, batch)
    text = lowered.as_text()
    assert text.count("func.func public @main") == 1
    assert "stablehlo.while" in text  # the decode loop is inside the same program
    new_state, metrics, samples = step(state, batch)
    for key in (
        "reward/total",
        "reward/exact",
        "accuracy",
        "kl",
        "clip_frac",
        "entropy",
        "response_length/mean",
        "moe/max_mean_load_ratio",
        "loss",
        "grad_norm",
    ):
        assert key in metrics and np.isfinite(float(metrics[key])), key
    assert int(new_state.step) == 1
    assert samples["tokens"].shape == (16, 6)
    bias0 = np.asarray(state.extra["layers"][1]["mlp"]["e_score_correction_bias"][...])
    bias1 = np.asarray(new_state.extra["layers"][1]["mlp"]["e_score_correction_bias"][...])
    assert not np.array_equal(bias0, bias1)  # the balancing bias moved
    assert np.allclose(np.abs(bias1 - bias0), 0.01) or np.any(bias1 == bias0)


def test_beta_zero_compiles_no_reference_forward():
    cfg = testing.tiny_dense_config()
    counts = {}
    for beta in (0.0, 0.04):
        graphdef, state, optimizer, config, batch = _setup(cfg, beta=beta)
        text = (
            jax.jit(grpo_step_fn(graphdef, optimizer, config, token_reward))
            .lower(state, batch)
            .as_text()
        )
        counts[beta] = text.count("stablehlo.dot_general")
    # the reference forward adds one forward's worth of matmuls (2 layers x 7 + lm_head)
    assert counts[0.04] - counts[0.0] >= 2 * 7 + 1


def test_multiple_iterations_move_the_ratio_and_clip():
    cfg = testing.tiny_dense_config()
    graphdef, state, optimizer, config, batch = _setup(cfg, mu=4, minibatches=2, eps=0.05, lr=3e-2)
    step = jax.jit(grpo_step_fn(graphdef, optimizer, config, token_reward))
    _, metrics, _ = step(state, batch)
    assert abs(float(metrics["ratio/mean"]) - 1.0) > 1e-3
    assert float(metrics["clip_frac"]) > 0.0
    graphdef, state, optimizer, config, batch = _setup(cfg, mu=1)
    _, metrics, _ = jax.jit(grpo_step_fn(graphdef, optimizer, config, token_reward))(state, batch)
    assert abs(float(metrics["ratio/mean"]) - 1.0) < 1e-3
    assert float(metrics["clip_frac"]) == 0.0


def test_text_reward_through_pure_callback():
    cfg = testing.tiny_dense_config()
    graphdef, state, optimizer, config, batch = _setup(cfg)
    config = dataclasses.replace(config, accuracy_reward="has_target")
    seen = []

    def host_reward(prompts, completions, **fields):
        seen.append(len(completions))
        scores = [float(str(TARGET) in t.split()) for t in completions]
        return np.asarray(scores, np.float32), [""] * len(completions)

    reward_fn = spec_of(RewardTerm("has_target", reward=Reward("has_target", "text", host_reward)))
    step = jax.jit(grpo_step_fn(graphdef, optimizer, config, reward_fn))
    _, metrics, samples = step(state, batch)
    assert seen and seen[0] == 16
    expected = np.mean(
        [
            float(TARGET in row[m])
            for row, m in zip(np.asarray(samples["tokens"]), np.asarray(samples["mask"]))
        ]
    )
    assert abs(float(metrics["reward/has_target"]) - expected) < 1e-6


@pytest.mark.parametrize(
    "mesh_cfg",
    [sharding.MeshConfig(data=2, fsdp=2, expert=2), sharding.MeshConfig(fsdp=4, tensor=2)],
    ids=["data2_fsdp2_expert2", "fsdp4_tensor2"],
)
def test_sharded_step_matches_single_device(mesh_cfg, devices):
    cfg = testing.tiny_moe_config()
    graphdef, state, optimizer, config, batch = _setup(cfg, beta=0.01)
    single_state, single_metrics, single_samples = jax.jit(
        grpo_step_fn(graphdef, optimizer, config, token_reward)
    )(state, batch)

    mesh = sharding.make_mesh(mesh_cfg)
    graphdef, state, optimizer, config, batch = _setup(cfg, beta=0.01)
    step = make_grpo_step(graphdef, optimizer, config, token_reward, mesh, state, batch)
    with sharding.use_mesh(mesh):
        new_state, metrics, samples = step(state, batch)
    np.testing.assert_array_equal(
        np.asarray(samples["tokens"]), np.asarray(single_samples["tokens"])
    )
    for key, value in single_metrics.items():
        np.testing.assert_allclose(
            float(metrics[key]), float(value), rtol=1e-4, atol=1e-5, err_msg=key
        )
    w = new_state.params["layers"][1]["mlp"]["w_up"][...]
    ref = single_state.params["layers"][1]["mlp"]["w_up"][...]
    assert np.abs(np.asarray(w) - np.asarray(ref)).max() < 1e-4


def test_reward_model_runs_inside_the_sharded_step(devices):
    """A frozen reward model is one more input of the one program; its score is added with its
    weight, logged as reward/<name>, and equals scoring the rollout outside the step."""
    from r1.rm.model import RewardModel
    from r1.rm.reward import make_frozen_scorer

    cfg = testing.tiny_dense_config()
    graphdef, state, optimizer, config, batch = _setup(cfg)
    rm_graphdef, rm_state = nnx.split(RewardModel(cfg, rngs=nnx.Rngs(3)))
    scorer = make_frozen_scorer(rm_graphdef, region="whole")

    def score(frozen, prompt_tokens, prompt_mask, completion, mask, fields):
        return scorer(frozen, prompt_tokens, prompt_mask, completion, mask), {}

    weight = 0.5
    spec = spec_of(*RULES, RewardTerm("helpful", weight, kind="model", score=score))
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    frozen = {"helpful": rm_state}
    step = make_grpo_step(graphdef, optimizer, config, spec, mesh, state, batch, frozen=frozen)
    text = step.lower(state, batch, frozen).as_text()
    assert text.count("func.func public @main") == 1
    with sharding.use_mesh(mesh):
        _, metrics, samples = step(state, batch, frozen)
    group = config.group_size
    expected = scorer(
        rm_state,
        jnp.repeat(batch["prompt_tokens"], group, 0),
        jnp.repeat(batch["prompt_mask"], group, 0),
        jnp.asarray(samples["tokens"]),
        jnp.asarray(samples["mask"]),
    )
    rule = token_reward(
        jnp.asarray(samples["tokens"]),
        jnp.asarray(samples["mask"]),
        None,
        {"first": jnp.repeat(batch["first"], group, 0)},
    ).total
    np.testing.assert_allclose(float(metrics["reward/helpful"]), float(expected.mean()), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(samples["rewards"]), np.asarray(rule + weight * expected), atol=1e-5
    )
    assert samples["correct"].shape == (len(samples["tokens"]),)
    with pytest.raises(ValueError, match="no frozen model state"):
        jax.eval_shape(grpo_step_fn(graphdef, optimizer, config, spec, 0.0), state, batch)
    with pytest.raises(ValueError, match="need `frozen`"):
        make_grpo_step(graphdef, optimizer, config, spec, mesh, state, batch)


def test_general_rows_get_the_model_reward_and_reasoning_rows_the_rules():
    """R1 stage 4: with a `general` batch field, rule rewards score reasoning rows only and a
    model reward with rows="general" scores general rows only."""
    cfg = testing.tiny_dense_config()
    graphdef, state, optimizer, config, batch = _setup(cfg)
    batch["general"] = jnp.asarray([False, True, False, True])

    def score(frozen, prompt_tokens, prompt_mask, completion, mask, fields):
        return jnp.full(completion.shape[:1], frozen, jnp.float32), {}

    reward = RewardTerm("helpful", 1.0, kind="model", score=score, rows="general")
    step = jax.jit(grpo_step_fn(graphdef, optimizer, config, spec_of(*RULES, reward), 0.0))
    _, _, samples = step(state, batch, {"helpful": jnp.float32(3.0)})
    group = config.group_size
    general = np.repeat(np.asarray(batch["general"]), group)
    rule = token_reward(
        jnp.asarray(samples["tokens"]),
        jnp.asarray(samples["mask"]),
        None,
        {"first": jnp.repeat(batch["first"], group, 0)},
    ).total
    expected = np.where(general, 3.0, np.asarray(rule))
    np.testing.assert_allclose(np.asarray(samples["rewards"]), expected, atol=1e-6)
    with pytest.raises(ValueError, match="rows must be"):
        RewardTerm("x", 1.0, kind="model", score=score, rows="some")


def test_general_mixture_source(tmp_path):
    from r1.data import procedural
    from r1.data.mixture import GeneralMixture, load_general_prompts

    path = tmp_path / "general.jsonl"
    path.write_text(
        '{"prompt": "Say hello."}\nnot json\n{"response": "x"}\n{"prompt": "Thank me."}\n'
    )
    general = load_general_prompts(str(path))
    assert [g["prompt"] for g in general] == ["Say hello.", "Thank me."]
    task = procedural.make_task("add", min_terms=2, max_terms=3, min_digits=1, max_digits=1)
    mix = GeneralMixture(procedural.ProceduralSource(task, 0), general, 0.3, seed=5)
    rows = [mix[i] for i in range(400)]
    share = np.mean([r["general"] for r in rows])
    assert 0.2 < share < 0.4
    assert all(r["answer"] == "" and r["task"] == "general" for r in rows if r["general"])
    assert all(r["answer"] != "" for r in rows if not r["general"])
    assert [mix[i] for i in range(50)] == rows[:50]  # deterministic (resume, multi-host)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(ValueError, match="no row with a `prompt`"):
        load_general_prompts(str(bad))
    with pytest.raises(ValueError, match="general_fraction"):
        GeneralMixture(mix.primary, general, 1.5, seed=0)


def test_gradient_accumulation_gives_the_same_update(devices):
    """num_microbatches=n splits each mini-batch's gradient over n interleaved row slices with
    one optimizer update: the same parameters as n=1 (SGD, so the update is the gradient), and
    auto (0) resolves to one row per batch shard on the mesh."""
    cfg = testing.tiny_moe_config()
    updated = {}
    for micro in (1, 4):
        graphdef, state, _, config, batch = _setup(cfg, beta=0.01, minibatches=2)
        optimizer = optax.sgd(0.5)
        _, state = init_train_state(
            Transformer(cfg, rngs=nnx.Rngs(0)), optimizer, seed=0, with_reference=True
        )
        config = dataclasses.replace(config, num_microbatches=micro)
        new_state, metrics, _ = jax.jit(grpo_step_fn(graphdef, optimizer, config, token_reward))(
            state, batch
        )
        updated[micro] = (new_state.params, metrics)
    for a, b in zip(jax.tree.leaves(updated[1][0]), jax.tree.leaves(updated[4][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # The mini-batch's losses, however sliced: equal up to float32 summation order (CI saw
    # |0.1912128 - 0.1912118| = 1.01e-6 once, i.e. 5e-6 relative).
    for key in ("loss", "loss/policy", "loss/kl"):
        assert float(updated[4][1][key]) == pytest.approx(
            float(updated[1][1][key]), rel=2e-5, abs=1e-6
        ), key
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(jax.tree.leaves(updated[1][0]), jax.tree.leaves(state.params))
    ]
    assert max(moved) > 1e-4  # the update is not trivially zero

    with pytest.raises(ValueError, match="num_microbatches=3 equal slices"):
        graphdef, state, optimizer, config, batch = _setup(cfg)
        jax.jit(
            grpo_step_fn(
                graphdef, optimizer, dataclasses.replace(config, num_microbatches=3), token_reward
            )
        ).lower(state, batch)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, expert=2))
    assert auto_microbatches(16, mesh) == 2 and auto_microbatches(8, mesh) == 1
    # 12 rows: expert (2) does not divide what data x fsdp leave (3), so 4 shards of 3 rows.
    assert auto_microbatches(4, mesh) == 1 and auto_microbatches(12, mesh) == 3


def test_slots_step_samples_and_learns_as_the_static_step(devices):
    """rl.slots: a step with 3 slots for 16 rows (rows end at varied EOS positions) gives the
    static step's completions and metrics (only the decode cost differs), is still one program,
    and on the 8-device mesh equals itself on one device."""
    cfg = testing.tiny_moe_config()
    graphdef, state, optimizer, config, batch = _setup(cfg, beta=0.01)
    sampling = dataclasses.replace(config.sampling, eos_ids=tuple(range(3, 60, 2)))
    static = dataclasses.replace(config, sampling=sampling)
    slots = dataclasses.replace(config, sampling=dataclasses.replace(sampling, slots=3))
    _, static_metrics, static_samples = jax.jit(
        grpo_step_fn(graphdef, optimizer, static, token_reward)
    )(state, batch)
    lengths = np.asarray(static_samples["mask"]).sum(axis=1)
    assert 1 < len(set(lengths.tolist())), lengths  # the rows end at varied positions
    step = jax.jit(grpo_step_fn(graphdef, optimizer, slots, token_reward))
    assert step.lower(state, batch).as_text().count("func.func public @main") == 1
    _, metrics, samples = step(state, batch)
    np.testing.assert_array_equal(np.asarray(samples["tokens"]), static_samples["tokens"])
    assert float(metrics["rollout/decode_steps"]) == expected_decode_steps(lengths.tolist(), 3)
    assert float(static_metrics["rollout/decode_steps"]) == lengths.max()
    occupancy = lengths.sum() / (3 * float(metrics["rollout/decode_steps"]))
    assert abs(float(metrics["rollout/slot_occupancy"]) - occupancy) < 1e-6
    assert float(metrics["rollout/longest_row"]) == lengths.max()
    for key, value in static_metrics.items():
        if key not in ("rollout/decode_steps", "rollout/slot_occupancy"):
            np.testing.assert_allclose(float(metrics[key]), float(value), atol=1e-5, err_msg=key)

    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, expert=2))
    sharded = make_grpo_step(graphdef, optimizer, slots, token_reward, mesh, state, batch)
    with sharding.use_mesh(mesh):
        _, mesh_metrics, mesh_samples = sharded(state, batch)
    np.testing.assert_array_equal(np.asarray(mesh_samples["tokens"]), samples["tokens"])
    for key, value in metrics.items():
        np.testing.assert_allclose(
            float(mesh_metrics[key]), float(value), rtol=1e-4, atol=1e-5, err_msg=key
        )

"""The KV-cache sampler against full forwards, NumPy filter references and statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.sampling import SamplingConfig, cache_bytes_per_token, filters, generate, init_cache
from r1.sampling.kv_cache import forward_with_cache
from r1.sampling.sampler import left_pad, make_sampler

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
CONFIGS = {"dense": testing.tiny_dense_config, "moe_mla": testing.tiny_moe_config}


def _model(name, seed=0):
    return Transformer(CONFIGS[name](), rngs=nnx.Rngs(seed))


@nnx.jit
def _forward(model, tokens):
    """The full forward the sampler is checked against, compiled once per model and length
    (run eagerly, the MoE model's forward dispatches op by op, slowly)."""
    return model(tokens)


def _run(model, config, prompts=PROMPTS, bucket=8, seed=0, row_ids=None):
    tokens, mask = left_pad(prompts, bucket, 0)
    graphdef, state = nnx.split(model)
    fn = make_sampler(graphdef, config)
    return fn(state, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(seed), row_ids)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_full_forward_argmax(name):
    model = _model(name)
    steps = 6
    # Three decode segments: the cache grows 8+2 -> 8+4 -> 8+6 slots between while-loops.
    config = SamplingConfig(max_new_tokens=steps, greedy=True, decode_segments=3)
    assert config.segment_ends() == (2, 4, 6)
    out = _run(model, config)
    for row, prompt in enumerate(PROMPTS):
        # One causal forward over prompt + completion: position p's logits are those of the
        # prefix ending at p, so each generated token must be the argmax after its prefix.
        completion = [int(t) for t in out.tokens[row]]
        logits = _forward(model, jnp.asarray([list(prompt) + completion]))[0]
        for t in range(steps):
            position = len(prompt) + t - 1
            assert int(jnp.argmax(logits[position])) == completion[t], (row, t)
            logp = float(jax.nn.log_softmax(logits[position])[completion[t]])
            assert abs(logp - float(out.logprobs[row, t])) < 1e-4
    assert bool(out.mask.all()) and bool(out.truncated.all())
    np.testing.assert_array_equal(out.lengths, [steps] * 3)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampled_logprobs_equal_teacher_forcing(name):
    model = _model(name, seed=1)
    config = SamplingConfig(
        max_new_tokens=7, num_samples=2, temperature=0.7, top_k=20, decode_segments=2
    )
    out = _run(model, config, seed=3)
    for row in range(len(PROMPTS) * 2):
        prompt = PROMPTS[row // 2]
        completion = np.asarray(out.tokens[row])[np.asarray(out.mask[row])].tolist()
        logits = _forward(model, jnp.asarray([prompt + completion]))[0]
        start = len(prompt) - 1
        step_logits = logits[start : start + len(completion)]
        idx = jnp.asarray(completion)[:, None]
        raw = jnp.take_along_axis(jax.nn.log_softmax(step_logits), idx, 1)[:, 0]
        filtered = filters.apply_filters(step_logits, 0.7, 20)
        sampled = jnp.take_along_axis(jax.nn.log_softmax(filtered), idx, 1)[:, 0]
        n = len(completion)
        np.testing.assert_allclose(out.logprobs[row, :n], raw, atol=1e-4)
        np.testing.assert_allclose(out.sampling_logprobs[row, :n], sampled, atol=1e-4)


def test_eos_and_multi_token_stop_sequences():
    model = _model("dense")
    free = _run(model, SamplingConfig(max_new_tokens=8, greedy=True))
    t = np.asarray(free.tokens)
    eos = int(t[0, 2])
    stop = (int(t[1, 2]), int(t[1, 3]))
    assert eos not in t[0, :2]
    config = SamplingConfig(
        max_new_tokens=8, greedy=True, eos_ids=(eos,), stop_sequences=(stop,), pad_id=0
    )
    out = _run(model, config)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    # row 0 ends with its EOS (included), then only padding
    np.testing.assert_array_equal(tokens[0, :3], t[0, :3])
    assert mask[0].tolist() == [True] * 3 + [False] * 5 and (tokens[0, 3:] == 0).all()
    assert int(out.lengths[0]) == 3 and not bool(out.truncated[0])
    assert (out.logprobs[0, 3:] == 0).all()
    # row 1 ends after the two-token stop sequence (unless it met EOS first)
    first_eos = [i for i in range(8) if t[1, i] == eos]
    end = min([3] + first_eos)
    assert int(out.lengths[1]) == end + 1 and not bool(out.truncated[1])
    assert (tokens[1, end + 1 :] == 0).all()


def test_group_sampling_prefills_once_and_rows_are_independent():
    model = _model("dense")
    greedy = _run(model, SamplingConfig(max_new_tokens=5, num_samples=3, greedy=True))
    tokens = np.asarray(greedy.tokens).reshape(3, 3, 5)
    assert (tokens == tokens[:, :1]).all()  # every group member equals the first
    np.testing.assert_array_equal(greedy.prompt_index, [0, 0, 0, 1, 1, 1, 2, 2, 2])

    config = SamplingConfig(max_new_tokens=5, num_samples=4)
    batch = _run(model, config)
    rows = np.asarray(batch.tokens).reshape(3, 4, 5)
    assert len({tuple(r) for r in rows[0]}) > 1  # samples within a group differ
    # the same prompt alone, with the row ids it had in the batch, samples the same tokens
    alone = _run(model, config, prompts=[PROMPTS[1]], row_ids=jnp.arange(4, 8))
    np.testing.assert_array_equal(np.asarray(alone.tokens), rows[1])


def _numpy_top_p(logits, p):
    out = np.full_like(logits, -np.inf)
    for i, row in enumerate(logits):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        mass = 0.0
        for j in order:
            if mass >= p:
                break
            out[i, j] = row[j]
            mass += probs[j]
        # ties with the last kept probability are kept too
        kept = probs[out[i] > -np.inf].min()
        out[i, probs >= kept] = row[probs >= kept]
    return out


def test_filters_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 50)).astype(np.float32) * 2
    for k in (1, 5, 49):
        ours = np.asarray(filters.top_k_filter(jnp.asarray(logits), k))
        kth = np.sort(logits, axis=1)[:, -k][:, None]
        np.testing.assert_array_equal(ours, np.where(logits >= kth, logits, -np.inf))
    for p in (0.1, 0.5, 0.9):
        ours = np.asarray(filters.top_p_filter(jnp.asarray(logits), p))
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(_numpy_top_p(logits, p)))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ours = np.asarray(filters.min_p_filter(jnp.asarray(logits), 0.2))
    np.testing.assert_array_equal(np.isfinite(ours), probs >= 0.2 * probs.max(1, keepdims=True))
    np.testing.assert_allclose(filters.apply_temperature(jnp.asarray(logits), 0.5), logits * 2)
    with pytest.raises(ValueError, match="temperature"):
        filters.apply_temperature(jnp.asarray(logits), 0.0)


def test_sampled_frequencies_pass_chi_square():
    probs = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
    n = 20000
    logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32))[None], (n, 1))
    keys = jax.random.split(jax.random.key(7), n)
    draws = np.asarray(filters.sample_rows(keys, logits))
    counts = np.bincount(draws, minlength=5)
    chi2 = float(((counts - n * probs) ** 2 / (n * probs)).sum())
    assert chi2 < 18.47  # 4 degrees of freedom, p = 0.001
    # top-k then renormalised: only the top 2 appear, in ratio 3:4
    filtered = filters.top_k_filter(logits, 2)
    draws = np.asarray(filters.sample_rows(keys, filtered))
    counts = np.bincount(draws, minlength=5)
    assert counts[:3].sum() == 0
    expected = n * np.array([0.3, 0.4]) / 0.7
    assert float(((counts[3:] - expected) ** 2 / expected).sum()) < 10.83  # 1 dof, p = 0.001


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sharded_mesh_gives_the_single_device_output(name, devices):
    config = SamplingConfig(max_new_tokens=6, num_samples=2, greedy=True)
    prompts = PROMPTS + [[20, 21, 22]]
    single = _run(_model(name), config, prompts=prompts)
    mesh_cfg = sharding.MeshConfig(data=2, fsdp=2, tensor=2)
    if name == "moe_mla":
        mesh_cfg = sharding.MeshConfig(data=2, expert=2, tensor=2, fsdp=1)
    mesh = sharding.make_mesh(mesh_cfg)
    model = sharding.create_sharded_model(lambda: _model(name), mesh)
    with sharding.use_mesh(mesh):
        sharded = _run(model, config, prompts=prompts)
    np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(single.tokens))
    np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-4)


def test_mla_cache_holds_only_latent_and_rope_key():
    cfg = testing.tiny_moe_config()
    cache = init_cache(cfg, batch=2, max_len=10, dtype="bfloat16")
    expected = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.num_layers * 2
    assert cache_bytes_per_token(cache) == expected
    assert set(cache["layers"][0]) == {"latent_rope"}
    dense = testing.tiny_dense_config()
    gqa = init_cache(dense, batch=2, max_len=10)
    assert cache_bytes_per_token(gqa) == 2 * dense.num_kv_heads * dense.head_dim * 2 * 4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_with_last_logits_only_equals_the_full_prefill(name):
    """The sampler's prefill makes the last position's logits only: the same numbers as the
    full [B, T, V] prefill's last position, and the same cache."""
    model = _model(name)
    tokens, mask = left_pad(PROMPTS, 8, 0)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask).astype(bool)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    cache = init_cache(model.config, batch=len(PROMPTS), max_len=12)
    full_logits, full_cache = forward_with_cache(model, tokens, positions, mask, cache, 0)
    last, last_cache = forward_with_cache(
        model, tokens, positions, mask, cache, 0, last_logits_only=True
    )
    assert last.shape == (len(PROMPTS), 1, model.config.vocab_size)
    np.testing.assert_allclose(
        np.asarray(last[:, 0]), np.asarray(full_logits[:, -1]), rtol=1e-5, atol=1e-5
    )
    for got, want in zip(jax.tree.leaves(last_cache), jax.tree.leaves(full_cache)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_generate_text_level():
    tokenizer = testing.DummyTokenizer()
    model = Transformer(
        testing.tiny_dense_config(vocab_size=tokenizer.vocab_size), rngs=nnx.Rngs(0)
    )
    texts = generate(model, tokenizer, ["12+3=", "hello"], max_new_tokens=5, num_samples=2, seed=1)
    assert len(texts) == 2 and all(len(group) == 2 for group in texts)
    assert all(isinstance(t, str) for group in texts for t in group)
    greedy = generate(model, tokenizer, ["12+3="], max_new_tokens=5, greedy=True)
    again = generate(model, tokenizer, ["12+3="], max_new_tokens=5, greedy=True)
    assert greedy == again


def test_config_validation():
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="too long|more than the bucket"):
        left_pad([[1, 2, 3]], 2, 0)
    with pytest.raises(ValueError, match="decode_segments"):
        SamplingConfig(max_new_tokens=4, decode_segments=5)
    assert SamplingConfig(max_new_tokens=256).segment_ends() == (64, 128, 192, 256)
    assert SamplingConfig(max_new_tokens=10, decode_segments=3).segment_ends() == (4, 7, 10)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_argmax_rows_and_gumbel_sampling_match_jax(platform, monkeypatch):
    """Both forms of argmax_rows: CPU's two passes and accelerators' one variadic reduce."""
    monkeypatch.setattr(filters, "compute_platform", lambda: platform)
    logits = jax.random.normal(jax.random.key(0), (16, 50))
    logits = logits.at[3, 5].set(9.0).at[3, 7].set(9.0)  # a tie: the first index wins
    np.testing.assert_array_equal(filters.argmax_rows(logits), jnp.argmax(logits, axis=-1))
    keys = jax.random.split(jax.random.key(1), 16)
    expected = jax.vmap(jax.random.categorical)(keys, logits)
    np.testing.assert_array_equal(filters.sample_rows(keys, logits), expected)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bfloat16_model_samples_a_batch_on_cpu(name):
    """bf16 weights, compute and cache, several rows (XLA's CPU runtime has no batched
    bf16 x bf16 -> f32 dot, which the prefill's attention scores asked for): runs, and its
    first greedy token is the full forward's argmax wherever that is stable (a clear margin in
    bf16 and the float32 model's choice too: in the MoE model bf16 rounding can flip a
    group-limited routing decision, which changes the logits by whole units)."""
    cfg = CONFIGS[name](dtype="bfloat16", param_dtype="bfloat16")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    model32 = Transformer(CONFIGS[name](), rngs=nnx.Rngs(0))
    steps = 4
    out = _run(model, SamplingConfig(max_new_tokens=steps, greedy=True, cache_dtype="bfloat16"))
    assert out.tokens.shape == (len(PROMPTS), steps)
    assert bool(jnp.all(jnp.isfinite(out.logprobs)))
    checked = 0
    for row, prompt in enumerate(PROMPTS):
        logits = _forward(model, jnp.asarray([prompt]))[0, -1].astype(jnp.float32)
        top = jnp.sort(logits)[-2:]
        first32 = _forward(model32, jnp.asarray([prompt]))[0, -1]
        stable = int(jnp.argmax(first32)) == int(jnp.argmax(logits))
        if stable and float(top[1] - top[0]) > 0.05:
            assert int(out.tokens[row, 0]) == int(jnp.argmax(logits)), row
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_master_weights_cast_for_decoding_compute_exactly_the_same(name):
    """The sampler decodes from `in_compute_dtype(model)`: float32 master weights of a bf16
    model stored in bf16, except the parameters the forward uses in float32 (norm scales,
    router weights), so the logits are bit for bit those of the float32-stored model."""
    from r1.models.layers import in_compute_dtype

    model = Transformer(CONFIGS[name](dtype="bfloat16"), rngs=nnx.Rngs(0))
    kept = []
    for i, (path, variable) in enumerate(nnx.iter_graph(model)):
        if isinstance(variable, nnx.Param):
            # constant-initialised scales and biases made inexact in bf16, so that casting a
            # parameter the forward uses in float32 would show
            noise = jax.random.normal(jax.random.key(i), variable.get_value().shape)
            variable.set_value(variable.get_value() + 0.01 * noise)
            if variable.get_metadata().get("keep_dtype"):
                kept.append(path)
    assert kept  # norms (and the MoE router)
    narrow = in_compute_dtype(model)
    dtypes = {}
    for _, variable in nnx.iter_graph(narrow):
        if isinstance(variable, nnx.Param):
            key = bool(variable.get_metadata().get("keep_dtype"))
            dtypes.setdefault(key, set()).add(str(variable.get_value().dtype))
    assert dtypes == {True: {"float32"}, False: {"bfloat16"}}
    tokens = jnp.asarray([[5, 6, 7, 8, 9, 10, 11, 12]])
    np.testing.assert_array_equal(np.asarray(narrow(tokens)), np.asarray(model(tokens)))
    # float32 parts too small to show through bf16 logits: the MoE routers' logits
    routers = [
        (a, b)
        for (_, a), (_, b) in zip(nnx.iter_graph(model), nnx.iter_graph(narrow), strict=True)
        if hasattr(a, "router_logits")
    ]
    assert bool(routers) == (name == "moe_mla")
    x = jax.random.normal(jax.random.key(0), (1, 4, model.config.hidden_size), jnp.bfloat16)
    for a, b in routers:
        np.testing.assert_array_equal(
            np.asarray(b.router_logits(x)), np.asarray(a.router_logits(x))
        )
    out_model = _run(model, SamplingConfig(max_new_tokens=3, greedy=True), prompts=PROMPTS[:1])
    out_narrow = _run(narrow, SamplingConfig(max_new_tokens=3, greedy=True), prompts=PROMPTS[:1])
    np.testing.assert_array_equal(out_model.tokens, out_narrow.tokens)
    np.testing.assert_array_equal(out_model.logprobs, out_narrow.logprobs)
    float_model = Transformer(CONFIGS[name](), rngs=nnx.Rngs(0))
    assert in_compute_dtype(float_model) is float_model  # nothing to narrow


def test_sampler_bound_to_a_data_mesh_splits_rows_and_matches_one_device(devices):
    """`make_sampler(..., mesh)`: host prompt rows are split over the mesh (one core per device
    on a CPU host) and the decode gives the single-device tokens."""
    config = SamplingConfig(max_new_tokens=5, num_samples=2, greedy=True)
    prompts = PROMPTS + [[20, 21, 22]]
    model = _model("dense")
    single = _run(model, config, prompts=prompts)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2))
    graphdef, state = nnx.split(model)
    with sharding.use_mesh(mesh):
        state = sharding.place_state(state, mesh)
    tokens, mask = left_pad(prompts, 8, 0)
    fn = make_sampler(graphdef, config, mesh)
    key = jax.random.key(0)
    assert "while" in fn.lower(state, tokens, mask, key).as_text()
    out = fn(state, tokens, mask, key)
    assert len(out.tokens.sharding.device_set) == 8
    assert out.tokens.sharding.spec[0] == ("data", "fsdp")  # 8 rows, one per device
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(single.tokens))
    np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-5)
    tokenizer = testing.DummyTokenizer()
    text_model = Transformer(
        testing.tiny_dense_config(vocab_size=tokenizer.vocab_size), rngs=nnx.Rngs(0)
    )
    kwargs = dict(max_new_tokens=4, num_samples=2, seed=3)
    prompts_text = ["12+3=", "hello", "7*8=", "x"]
    assert generate(text_model, tokenizer, prompts_text, mesh=mesh, **kwargs) == generate(
        text_model, tokenizer, prompts_text, **kwargs
    )

"""`r1.sampling.decode_kernel`: the Pallas decode-attention kernel (interpreted on CPU) equals
the XLA form, alone, sharded over the mesh and inside the sampler, and compiles for TPU inside
the decode loop with the cache read once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.sampling import SamplingConfig, decode_kernel
from r1.sampling.kv_cache import _decode_attention
from r1.sampling.sampler import left_pad, make_sampler


def _operands(b, kv, g, d, slots, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (b, kv, g, d), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (b, kv, d, slots), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (b, kv, slots, d), jnp.float32).astype(dtype)
    mask = jax.random.uniform(keys[3], (b, slots)) > 0.3
    mask = mask.at[:, :7].set(False).at[1, 129:].set(False)  # left padding; a short row
    return q, k, v, mask


@pytest.mark.parametrize(
    "dtype, slots, atol",
    [(jnp.float32, 256, 1e-6), (jnp.float32, 640, 1e-6), (jnp.bfloat16, 384, 2e-2)],
)
def test_kernel_equals_the_xla_decode_attention(dtype, slots, atol):
    """Several slot tiles (online softmax across them), masked slots, G = 3 heads per kv head."""
    q, k, v, mask = _operands(4, 2, 3, 16, slots, dtype)
    want = _decode_attention(q, k, v, mask, 0.3)
    got = decode_kernel.decode_attention(q, k, v, mask, 0.3, interpret=True)
    assert got.dtype == v.dtype and got.shape == q.shape
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=atol
    )


def test_kernel_with_masked_leading_tiles_and_an_empty_row():
    """Left padding over two whole tiles (the running max starts on masked slots and is wiped
    when real keys come) and a row with no valid slot (a uniform average, as the XLA form)."""
    q, k, v, mask = _operands(3, 1, 2, 16, 640, jnp.float32, seed=2)
    mask = mask.at[:, :300].set(False).at[2].set(False)
    want = _decode_attention(q, k, v, mask, 0.5)
    got = decode_kernel.decode_attention(q, k, v, mask, 0.5, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6)


def test_kernel_sharded_over_the_mesh_equals_unsharded(devices):
    """Rows over data x fsdp, kv heads over tensor: the shard_map gives the unsharded result."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2), devices)
    q, k, v, mask = _operands(8, 2, 2, 16, 128, jnp.float32, seed=1)
    want = decode_kernel.decode_attention(q, k, v, mask, 0.25, interpret=True)
    with sharding.use_mesh(mesh):
        got = jax.jit(lambda *a: decode_kernel.decode_attention(*a, 0.25, interpret=True))(
            q, k, v, mask
        )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_slot_counts_the_kernel_does_not_tile_raise():
    assert decode_kernel.slot_tile(1024) == 512 and decode_kernel.slot_tile(384) == 384
    assert decode_kernel.slot_tile(640) == 128 and decode_kernel.slot_tile(200) == 0
    q, k, v, mask = _operands(1, 1, 1, 8, 200, jnp.float32)
    with pytest.raises(ValueError, match="200 cache slots"):
        decode_kernel.decode_attention(q, k, v, mask, 1.0, interpret=True)


def test_sampler_with_the_kernel_samples_what_xla_samples(devices, monkeypatch):
    """A tiny model with attention_impl='pallas' on a data x fsdp mesh (prefill: splash;
    decode windows of 128 and 256 slots: this kernel; of 192: the XLA form) samples the same
    tokens and log-probs as with 'xla'."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4), devices)
    tokens, mask = (np.asarray(a) for a in left_pad([[5, 6, 7], [8, 9], [10]] * 3 + [[4]], 64, 0))
    config = SamplingConfig(max_new_tokens=192, num_samples=2, decode_segments=3, top_k=20)
    calls = []
    kernel = decode_kernel.decode_attention
    monkeypatch.setattr(
        decode_kernel, "decode_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k)
    )
    out = {}
    for impl in ("xla", "pallas"):
        cfg = testing.tiny_dense_config().replace(attention_impl=impl)
        graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
        with sharding.use_mesh(mesh):
            state = sharding.place_state(state, mesh)
        out[impl] = make_sampler(graphdef, config, mesh)(state, tokens, mask, jax.random.key(3))
    assert calls  # traced into the pallas sampler's decode (the windows of 128 and 256 slots)
    np.testing.assert_array_equal(out["pallas"].tokens, out["xla"].tokens)
    np.testing.assert_allclose(out["pallas"].logprobs, out["xla"].logprobs, atol=1e-4)


def test_decode_loop_compiled_for_tpu_runs_the_kernel_and_reads_less():
    """The tiny GRPO config's rollout compiled for v5e:2x2 with attention_impl='pallas': each
    decode loop runs the kernel for its layer, and a decode step counts fewer HBM bytes than
    with the XLA form (which writes float32 scores and reads them back for the softmax)."""
    pytest.importorskip("libtpu", reason="needs the tpu extra: pip install -e .[tpu]")
    from r1 import aot, configlib
    from r1.aot.loops import parse_computations

    step_bytes = {}
    for impl in ("xla", "pallas"):
        config = configlib.load_config("configs/r1_zero.py:tiny")
        config.model.update(
            {
                **configlib.load_config("configs/models.py:qwen2_tiny").model.to_dict(),
                "attention_impl": impl,
                "num_layers": 1,
                "head_dim": 128,
                "dtype": "bfloat16",
            }
        )
        # 1,024 rows: each device's cache (50 MB a layer) lives in HBM, not in VMEM.
        config.rl.update(
            prompts_per_step=128, group_size=8, max_new_tokens=256, decode_segments=2
        )  # windows of 256, 384 slots
        config.data.buckets = (128,)
        mesh = aot.build_mesh(config, aot.topology_devices("v5e:2x2"))
        program = aot.grpo_program(config, mesh)
        text = aot.rollout_hlo(program)
        count = aot.count_loops(text)
        decode = [loop for loop in count.loops if loop.is_decode]
        assert len(decode) == 2
        _, comps = parse_computations(text)
        kernels = [
            sum(
                decode_kernel.KERNEL_NAME in line and "tpu_custom_call" in line
                for line in comps[loop.body].lines
            )
            for loop in decode
        ]
        assert kernels == ([1, 1] if impl == "pallas" else [0, 0])
        step_bytes[impl] = count.decode_step.bytes
    assert step_bytes["pallas"] < step_bytes["xla"]


# ------------------------------------------------------------------------ MLA (latent) kernel
def _latent_operands(layers, b, h, c, r, slots, dtype, seed=0):
    """Query, query rope, latent, rope and mask: row 0 runs to the end, row 1 ends inside its
    second tile of 128, row 2 has no valid slot, row 3 ends on a tile boundary (256), row 4
    (b > 4) inside its first tile; every row left-padded over a whole tile."""
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (b, h, c), jnp.float32).astype(dtype)
    qr = jax.random.normal(keys[1], (b, h, r), jnp.float32).astype(dtype)
    latent = jax.random.normal(keys[2], (layers, b, slots, c), jnp.float32).astype(dtype)
    rope = jax.random.normal(keys[3], (layers, b, slots, r), jnp.float32).astype(dtype)
    mask = jax.random.uniform(keys[4], (b, slots)) > 0.3
    mask = mask.at[:, :130].set(False).at[:, 130].set(True)
    mask = mask.at[1, 200:].set(False).at[2].set(False).at[3, 256:].set(False)
    if b > 4:
        mask = mask.at[4].set(False).at[4, 5:60].set(True)
    return q, qr, latent, rope, mask


def _latent_reference(q, qr, latent, rope, mask, scale):
    """The absorbed attention in float64 NumPy: softmax over valid slots (a row with none: the
    average of every slot, as the XLA form's MASK_VALUE gives), probabilities times the latent."""
    q, qr, latent, rope = (np.asarray(a, np.float64) for a in (q, qr, latent, rope))
    scores = (np.einsum("bhc,bsc->bhs", q, latent) + np.einsum("bhr,bsr->bhs", qr, rope)) * scale
    scores = np.where(np.asarray(mask)[:, None, :], scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhs,bsc->bhc", probs, latent)


def _past_each_rows_last_tile(array, mask, value, tile=128):
    """array [L, B, S, X] with `value` in every slot past each row's last 128-slot tile (the
    tiles the kernel must neither fetch nor compute)."""
    ends = np.asarray(decode_kernel.row_ends(mask))
    past = np.arange(array.shape[2])[None, :] >= ((ends + tile - 1) // tile * tile)[:, None]
    return jnp.where(jnp.asarray(past)[None, :, :, None], value, array)


@pytest.mark.parametrize("dtype, atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_latent_kernel_equals_the_absorbed_attention(dtype, atol):
    """Five slot tiles of 128, a stacked cache of two layers read at layer 1, rows ending in
    different tiles and on a tile boundary: the absorbed attention of each row, with NaN in
    every slot past a row's last tile (so a tile read or computed past it would show); a row
    with no valid slot gets the average of its first tile's latent."""
    q, qr, latent, rope, mask = _latent_operands(2, 4, 3, 32, 8, 640, dtype)
    cache = _past_each_rows_last_tile(jnp.concatenate([latent, rope], axis=-1), mask, jnp.nan)
    got = decode_kernel.latent_decode_attention(q, qr, cache, mask, 0.2, 1, True)
    assert got.dtype == latent.dtype and got.shape == q.shape
    got = np.asarray(got, np.float32)
    valid = np.asarray(mask).any(axis=1)
    want = _latent_reference(q, qr, latent[1], rope[1], mask, 0.2)
    np.testing.assert_allclose(got[valid], want[valid], atol=atol, rtol=atol)
    first_tile = np.asarray(latent[1], np.float64)[~valid, :128].mean(axis=1)  # [rows, C]
    np.testing.assert_allclose(
        got[~valid], np.broadcast_to(first_tile[:, None], got[~valid].shape), atol=atol
    )
    unstacked = decode_kernel.latent_decode_attention(q, qr, cache[0], mask, 0.2, None, True)
    np.testing.assert_allclose(
        np.asarray(unstacked, np.float32)[valid],
        _latent_reference(q, qr, latent[0], rope[0], mask, 0.2)[valid],
        atol=atol,
        rtol=atol,
    )


def test_latent_kernel_checks_the_cache_width_and_slots():
    q, qr, latent, rope, mask = _latent_operands(1, 2, 2, 16, 8, 256, jnp.float32)
    with pytest.raises(ValueError, match="a cache of 16 values per slot"):
        decode_kernel.latent_decode_attention(q, qr, latent[0], mask, 1.0, None, True)
    cache = jnp.concatenate([latent, rope], axis=-1)[:, :, :200]
    with pytest.raises(ValueError, match="200 cache slots"):
        decode_kernel.latent_decode_attention(q, qr, cache[0], mask[:, :200], 1.0, None, True)


def test_row_ends_are_one_past_each_rows_last_valid_slot():
    """The rows' ends the kernel's tiles stop at: left padding does not shorten a row, a gap
    inside it does not end it, a row with no valid slot reads its first tile."""
    mask = np.zeros((4, 512), bool)
    mask[0, 140:300] = True  # left padding, then valid slots up to 299
    mask[1, 140:200] = mask[1, 260] = True  # a gap: the end is after slot 260
    mask[3, :] = True
    ends = decode_kernel.row_ends(jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(ends), [300, 261, 1, 512])


def test_latent_kernel_sharded_over_the_mesh_equals_unsharded(devices):
    """Rows over fsdp x expert (`cache_batch`); the two devices of `cache_heads` (tensor) split
    each row's five slot tiles (one reads three, the other two; a row ending in its first tile
    has none for the second device) and keep two heads each: the NumPy reference, with NaN
    past each row's last tile."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, expert=2, tensor=2), devices)
    q, qr, latent, rope, mask = _latent_operands(2, 8, 4, 16, 8, 640, jnp.float32, seed=1)
    cache = _past_each_rows_last_tile(jnp.concatenate([latent, rope], axis=-1), mask, jnp.nan)
    valid = np.asarray(mask).any(axis=1)
    want = _latent_reference(q, qr, latent[1], rope[1], mask, 0.25)
    with sharding.use_mesh(mesh):
        got = jax.jit(
            lambda *a: decode_kernel.latent_decode_attention(*a, 0.25, 1, interpret=True)
        )(q, qr, cache, mask)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-5, rtol=1e-5)
    assert np.isfinite(np.asarray(got)).all()


def test_sampler_with_the_latent_kernel_samples_what_xla_samples(devices, monkeypatch):
    """A tiny MLA + MoE model (DeepSeek-V3 style, scanned layers) on an fsdp x expert x tensor
    mesh, decoding through slots in the weights-stationary layout as the DeepSeek-V3 config
    does, with decode_attention_impl='pallas' (attention_impl stays 'xla': the prefill runs
    XLA) samples the tokens and log-probs of 'xla'; the kernel reads the scanned block's
    stacked cache at each layer in place."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, expert=2, tensor=2), devices)
    tokens, mask = (np.asarray(a) for a in left_pad([[5, 6, 7], [8, 9], [10], [4]], 64, 0))
    calls = []
    kernel = decode_kernel.latent_decode_attention
    monkeypatch.setattr(
        decode_kernel,
        "latent_decode_attention",
        lambda *a, **k: calls.append(a[5]) or kernel(*a, **k),
    )
    config = SamplingConfig(
        max_new_tokens=64,  # 128 cache slots: one tile
        num_samples=2,
        slots=4,
        top_k=20,
        eos_ids=(3,),
        unstack_layers=False,
        stationary_weights=True,
    )
    out = {}
    for impl in ("xla", "pallas"):
        cfg = testing.tiny_moe_config(scan_layers=True, decode_attention_impl=impl)
        graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
        with sharding.use_mesh(mesh):
            state = sharding.place_state(state, mesh)
        out[impl] = make_sampler(graphdef, config, mesh)(state, tokens, mask, jax.random.key(5))
    np.testing.assert_array_equal(out["pallas"].tokens, out["xla"].tokens)
    np.testing.assert_array_equal(out["pallas"].mask, out["xla"].mask)
    np.testing.assert_allclose(out["pallas"].logprobs, out["xla"].logprobs, atol=1e-4)
    # Traced into the decode step, for each scanned block with its layer index.
    assert calls and all(layer is not None for layer in calls)


def test_decode_attention_impl_chooses_the_decode_kernel_and_is_checked():
    cfg = testing.tiny_moe_config()
    assert not cfg.use_decode_kernel  # auto with attention_impl 'xla'
    assert cfg.replace(attention_impl="pallas").use_decode_kernel
    assert cfg.replace(decode_attention_impl="pallas").use_decode_kernel
    assert not cfg.replace(attention_impl="pallas", decode_attention_impl="xla").use_decode_kernel
    with pytest.raises(ValueError, match="decode_attention_impl"):
        cfg.replace(decode_attention_impl="cudnn")


def test_mla_decode_loop_compiled_for_tpu_runs_the_latent_kernel_and_reads_less():
    """A DeepSeek-V3-style model's rollout (MLA + MoE, a scanned block, slots, the weights-
    stationary layout) compiled for v5e:2x2 with decode_attention_impl='pallas': the decode
    step runs the latent kernel in each layer's attention and counts fewer HBM bytes than the
    XLA form (float32 scores written and read back, each window's cache cut and copied)."""
    pytest.importorskip("libtpu", reason="needs the tpu extra: pip install -e .[tpu]")
    from r1 import aot, configlib
    from r1.aot.loops import parse_computations

    step_bytes = {}
    for impl in ("xla", "pallas"):
        config = configlib.load_config("configs/r1_zero.py:tiny")
        config.model.update(
            {
                **configlib.load_config("configs/models.py:moe_tiny").model.to_dict(),
                "decode_attention_impl": impl,
                "num_layers": 2,  # one dense layer, one MoE layer
                "kv_lora_rank": 256,
                "qk_rope_head_dim": 64,
                "scan_layers": True,
                "dtype": "bfloat16",
            }
        )
        # 512 rows in 512 slots of 640 positions: each device's cache (52 MB a layer) lives
        # in HBM, not in VMEM.
        config.rl.update(
            prompts_per_step=64,
            group_size=8,
            max_new_tokens=512,
            slots=512,
            unstack_layers=False,
            stationary_weights=True,
        )
        config.data.buckets = (128,)
        mesh = aot.build_mesh(config, aot.topology_devices("v5e:2x2"))
        program = aot.grpo_program(config, mesh)
        text = aot.rollout_hlo(program)
        count = aot.count_loops(text)
        _, comps = parse_computations(text)
        kernels = sum(
            decode_kernel.LATENT_KERNEL_NAME in line and "tpu_custom_call" in line
            for loop in count.loops
            for line in comps[loop.body].lines
        )
        assert kernels == (2 if impl == "pallas" else 0)  # the dense and the MoE block
        step_bytes[impl] = count.decode_step.bytes
    # The kernel reads each row's 640 x 320 cache values once (52 MB a layer and device).
    assert step_bytes["pallas"] < 0.5 * step_bytes["xla"]

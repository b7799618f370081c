"""`r1.aot.loops`: the compiler's cost model with every loop counted by its trip count (CPU
programs; no TPU needed)."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from r1 import aot
from r1.aot.cost import optimized_hlo
from r1.aot.hlo_text import parse_computations
from r1.aot.loops import _branch_runs, _control_flow
from r1.loop_scopes import branch_scope, stated_branch_runs
from r1.models.transformer import Transformer
from r1.sampling.kv_cache import forward_with_cache, init_cache
from r1.sampling.sampler import SamplingConfig, sample
from r1.sampling.slots import decode_scope
from r1.testing import tiny_dense_config, tiny_moe_config

MATMUL = 2 * 8 * 64 * 64  # flops of one [8, 64] x [64, 64] product


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def test_scan_while_and_conditional_are_counted_by_their_runs():
    """4 scanned products + a decode loop of 10 steps + a conditional whose costly branch has 2
    products = 16 products, where XLA's own count has 4."""

    def program(w, x, stop):
        y, _ = jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)
        with jax.named_scope(decode_scope(10)):  # stops at a data-dependent step, at most 10
            z, _ = jax.lax.while_loop(
                lambda s: s[1] < stop, lambda s: (s[0] @ w[0], s[1] + 1), (y, 0)
            )
        branch = jax.lax.cond(x[0, 0] > 0, lambda v: (v @ w[1]) @ w[2], lambda v: v + 1.0, y)
        return z + branch

    compiled = _compiled(program, jnp.ones((4, 64, 64)), jnp.ones((8, 64)), 10)
    count = aot.count_loops(compiled.as_text())
    assert count.as_compiled.flops == pytest.approx(compiled.cost_analysis()["flops"], rel=1e-6)
    assert count.as_compiled.flops == pytest.approx(4 * MATMUL, rel=0.01)
    assert count.total.flops == pytest.approx(16 * MATMUL, rel=0.01)
    runs = {(loop.trips, loop.runs) for loop in count.loops}
    assert (4, 4.0) in runs and (None, 10.0) in runs
    assert count.decode_steps == 10 and not count.uncounted
    assert count.decode_total.flops == pytest.approx(10 * MATMUL, rel=0.01)
    assert count.total.bytes > 3 * count.as_compiled.bytes


def test_conditionals_count_each_branch_by_the_runs_their_scope_states():
    """Inside a 4-step decode loop: a cond whose true branch (2 products) runs 1 of 4 steps,
    and a switch whose branches (0, 1, 2 products) run 1, 2, 1 of 4: 2 + 4 products counted
    instead of the 8 + 8 of the costliest branches. The statement is also read from the
    branches' instructions when the compiler renamed the conditional."""

    def program(w, x, stop):
        def body(s):
            v, i = s
            with jax.named_scope(branch_scope((3, 1))):
                v = jax.lax.cond(i % 4 == 0, lambda u: jnp.tanh((u @ w[0]) @ w[1]), jnp.tanh, v)
            branches = [jnp.tanh, lambda u: jnp.tanh(u @ w[2]), lambda u: (u @ w[3]) @ w[4]]
            # The statement is what is counted, whatever the index computed here.
            with jax.named_scope(branch_scope((1, 2, 1))):
                v = jax.lax.switch(jnp.minimum(i % 3, 2), branches, v)
            return v, i + 1

        with jax.named_scope(decode_scope(4)):
            return jax.lax.while_loop(lambda s: s[1] < stop, body, (x, 0))[0]

    text = _compiled(program, jnp.ones((5, 64, 64)), jnp.ones((8, 64)), 4).as_text()
    assert aot.count_loops(text).total.flops == pytest.approx(6 * MATMUL, rel=0.02)
    renamed = re.sub(
        r"( conditional\(.*op_name=\")[^\"]*", lambda m: m.group(1) + "conditional.17", text
    )
    assert renamed != text
    assert aot.count_loops(renamed).total.flops == pytest.approx(6 * MATMUL, rel=0.02)
    unstated = re.sub(r"branch_runs(_\d+)+/", "", text)
    assert aot.count_loops(unstated).total.flops == pytest.approx(16 * MATMUL, rel=0.02)


def test_stated_branch_runs_belong_to_the_innermost_conditional():
    outer = "jit(f)/while/body/branch_runs_5_1/cond"
    assert stated_branch_runs(outer) == (5, 1)
    assert stated_branch_runs(outer + "/branch_1_fun/cond") is None  # unstated, inside
    assert stated_branch_runs(outer + "/branch_1_fun/branch_runs_2_3/cond") == (2, 3)
    inside = lambda name: stated_branch_runs(name, inside=True)  # noqa: E731
    assert inside(outer + "/branch_1_fun/dot_general") == (5, 1)
    assert inside(outer + "/branch_1_fun/cond/branch_0_fun/dot_general") is None
    assert inside(outer + "/branch_1_fun/branch_runs_2_3/cond/branch_0_fun/dot") == (2, 3)
    assert inside("jit(f)/branch_runs_5_1/and") is None
    with pytest.raises(ValueError, match="branch_scope"):
        branch_scope((0, 0))


def test_trip_counts_are_read_from_the_loop_when_the_compiler_does_not_annotate_them():
    """The TPU compiler's HLO carries no `known_trip_count`: the count comes from the loop's
    condition (counter < bound), initial value and increment. Same program, annotations
    stripped: same count."""

    def program(w, x):
        def layer(c, wi):
            inner = jax.lax.fori_loop(0, 3, lambda _, h: jnp.tanh(h @ wi), c)
            return inner, None

        return jax.lax.scan(layer, x, w)[0]

    text = _compiled(program, jnp.ones((5, 64, 64)), jnp.ones((8, 64))).as_text()
    stripped = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", text)
    assert "known_trip_count" in text and "known_trip_count" not in stripped
    annotated, read = aot.count_loops(text), aot.count_loops(stripped)
    assert read.total.flops == pytest.approx(annotated.total.flops)
    assert read.total.flops == pytest.approx(15 * MATMUL, rel=0.02)
    assert sorted(loop.trips for loop in read.loops) == [3, 5]


def test_unnamed_data_dependent_loop_is_counted_once_and_listed():
    def program(x, stop):
        body = lambda s: (s[0] @ s[0], s[1] + 1)  # noqa: E731
        return jax.lax.while_loop(lambda s: s[1] < stop, body, (x, 0))

    count = aot.count_loops(_compiled(program, jnp.ones((64, 64)), 7).as_text())
    assert count.total.flops == pytest.approx(2 * 64**3, rel=0.01)
    assert len(count.uncounted) == 1 and count.decode_steps == 0


def _abstract(cfg):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    return graphdef, state


# Wide enough that the products, not the bookkeeping around them, carry the flops (nothing runs:
# the programs are only compiled).
WIDE = dict(hidden_size=256, intermediate_size=512, vocab_size=1024)
CONFIGS = [
    tiny_dense_config(num_layers=4, **WIDE),
    tiny_moe_config(num_layers=4, moe_intermediate_size=128, **WIDE),
]


@pytest.mark.parametrize(
    "cfg,grad", [(CONFIGS[0], True), (CONFIGS[1], False)], ids=["dense", "moe"]
)
def test_scanned_model_counts_as_many_flops_as_unrolled(cfg, grad):
    """The same model with layers unrolled and under `lax.scan` (dense: forward + backward; MLA +
    MoE, two scanned stacks: forward): the counted flops agree within 2%; XLA's own count of
    the scanned program does not. (The scanned MoE backward really does ~3% more work: its
    forward scan also emits the residuals the backward scan reads.)"""
    tokens = jnp.ones((2, 16), jnp.int32)
    counts = {}
    for scan in (False, True):
        graphdef, state = _abstract(cfg.replace(scan_layers=scan))

        def loss(state, tokens, graphdef=graphdef):
            return jnp.mean(nnx.merge(graphdef, state)(tokens)[0] ** 2)

        fn = jax.grad(loss) if grad else loss
        counts[scan] = aot.count_loops(_compiled(fn, state, tokens).as_text())
    unrolled, scanned = counts[False].total.flops, counts[True].total.flops
    assert scanned == pytest.approx(unrolled, rel=0.02)
    assert counts[True].as_compiled.flops < 0.8 * unrolled  # what XLA alone reports
    assert any(loop.trips and loop.trips > 1 for loop in counts[True].loops)


def test_decode_loop_total_is_one_decode_step_times_the_steps():
    """The sampler's decode loop (scanned layers kept stacked, so the layer scan is nested in
    it) counts max_new_tokens steps, each costing what one cached forward step compiled alone
    costs (plus the token choice)."""
    cfg = tiny_dense_config(num_layers=3).replace(scan_layers=True)
    graphdef, state = _abstract(cfg)
    rows, prompt_len, new = 4, 8, 12
    config = SamplingConfig(
        max_new_tokens=new, greedy=True, decode_segments=1, unstack_layers=False
    )

    def rollout(state, prompts):
        model = nnx.merge(graphdef, state)
        return sample(model, prompts, prompts > 0, jax.random.key(0), config).tokens

    prompts = jnp.ones((rows, prompt_len), jnp.int32)
    count = aot.count_loops(_compiled(rollout, state, prompts).as_text())
    assert count.decode_steps == new

    def one_step(state, token):
        model = nnx.merge(graphdef, state)
        cache = init_cache(cfg, rows, prompt_len + new)
        logits, _ = forward_with_cache(model, token, token, token > 0, cache, prompt_len)
        return jnp.argmax(logits, -1)

    alone = aot.count_loops(_compiled(one_step, state, jnp.ones((rows, 1), jnp.int32)).as_text())
    assert count.decode_total.flops == pytest.approx(new * count.decode_step.flops)
    assert count.decode_step.flops == pytest.approx(alone.total.flops, rel=0.1)
    assert count.total.flops > count.decode_total.flops  # + the prefill


def test_slot_decode_states_its_refill_runs():
    """The compiled slot decode's refill conditional carries the runs the counter reads: 6 rows
    of 8 tokens through 4 slots take at most 16 steps, of which at most 3 refill (the first,
    and one per row that waited)."""
    cfg = tiny_dense_config(num_layers=2).replace(scan_layers=True)
    graphdef, state = _abstract(cfg)
    config = SamplingConfig(
        max_new_tokens=8, greedy=True, slots=4, decode_segments=2, unstack_layers=False
    )

    def rollout(state, prompts):
        model = nnx.merge(graphdef, state)
        return sample(model, prompts, prompts > 0, jax.random.key(0), config).tokens

    text = _compiled(rollout, state, jnp.ones((6, 4), jnp.int32)).as_text()
    header, comps = parse_computations(text)
    stated = [
        _branch_runs(comps, op, callees)
        for name in comps
        for kind, callees, _, _, op in _control_flow(comps, name)
        if kind == "conditional"
    ]
    assert aot.count_loops(text).decode_steps == 16
    assert (13, 3) in stated


def test_pallas_kernels_count_the_flops_and_bytes_they_state():
    """XLA gives a custom call no cost; a Pallas kernel's `cost_estimate` (here the megablox
    grouped matmul, compiled for a TPU) is counted instead: its flops, and its bytes (at least
    the operands and the result once)."""
    pytest.importorskip("libtpu", reason="needs the tpu extra: pip install -e .[tpu]")
    from jax.experimental.pallas.ops.tpu.megablox import gmm
    from jax.sharding import SingleDeviceSharding

    device = SingleDeviceSharding(aot.topology_devices("v5e:2x2")[0])
    m, k, n, groups = 512, 256, 512, 8
    args = (
        jax.ShapeDtypeStruct((m, k), jnp.bfloat16, sharding=device),
        jax.ShapeDtypeStruct((groups, k, n), jnp.bfloat16, sharding=device),
        jax.ShapeDtypeStruct((groups,), jnp.int32, sharding=device),
    )
    lowered = jax.jit(lambda x, w, g: gmm(x, w, g, preferred_element_type=jnp.bfloat16)).lower(
        *args
    )
    count = aot.count_loops(optimized_hlo(lowered))
    assert count.as_compiled.flops < 0.01 * 2 * m * k * n
    assert count.total.flops == pytest.approx(2 * m * k * n, rel=0.01)
    stated = re.findall(r'"cost_estimate":\{[^}]*?"bytes_accessed":"(\d+)"', optimized_hlo(lowered))
    assert stated and count.total.bytes >= sum(float(b) for b in stated)
    assert count.total.bytes >= 2 * (m * k + groups * k * n + m * n)


def test_causal_tiles_of_blockwise_attention_count_their_mean():
    """The blockwise attention's causal tile loops have traced bounds (tiles 0..i); their
    scopes state the mean, (n + 1) / 2 tiles, so nothing is left counted once and the forward
    comes to about (n + 1) / 2n of the dense attention's all-pairs products."""
    from r1.models.attention import SegmentMask, blockwise_attention, dot_product_attention

    b, t, h, d, tile = 1, 512, 4, 64, 64
    q = jnp.ones((b, t, h, d))
    seg = jnp.zeros((b, t), jnp.int32)
    mask = SegmentMask(seg, jnp.ones((b, t), bool))

    def tiled(q):
        return blockwise_attention(q, q, q, mask, 0.1, tile).sum()

    def dense(q):
        return dot_product_attention(q, q, q, mask.dense(), 0.1).sum()

    counts = {f: aot.count_loops(_compiled(f, q).as_text()) for f in (tiled, dense)}
    assert not counts[tiled].uncounted
    ratio = counts[tiled].total.flops / counts[dense].total.flops
    n = t // tile
    assert ratio == pytest.approx((n + 1) / (2 * n), rel=0.1)
    assert counts[tiled].as_compiled.flops < 0.1 * counts[dense].total.flops  # XLA alone


ON_CHIP_PROGRAM = """HloModule on_chip

ENTRY %main (weight: bf16[1024,512], x: bf16[16,1024]) -> bf16[16,512] {
  %weight = bf16[1024,512]{1,0} parameter(0)
  %x = bf16[16,1024]{1,0} parameter(1)
  %prefetch = (bf16[1024,512]{1,0:S(1)}, bf16[1024,512]{1,0}, u32[]{:S(2)}) copy-start(%weight)
  %in_vmem = bf16[1024,512]{1,0:S(1)} copy-done(%prefetch)
  %y = bf16[16,512]{1,0:S(1)} dot(%x, %in_vmem), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %evict = (bf16[16,512]{1,0}, bf16[16,512]{1,0:S(1)}, u32[]{:S(2)}) copy-start(%y)
  ROOT %out = bf16[16,512]{1,0} copy-done(%evict)
}
"""


SLICE_PREFETCH_PROGRAM = """HloModule slice_prefetch

%rows (w: bf16[1024,512]) -> bf16[256,512] {
  %w = bf16[1024,512]{1,0} parameter(0)
  ROOT %part = bf16[256,512]{1,0:S(1)} slice(%w), slice={[0:256], [0:512]}
}

ENTRY %main (w: bf16[1024,512], x: bf16[16,256]) -> bf16[16,512] {
  %w = bf16[1024,512]{1,0} parameter(0)
  %x = bf16[16,256]{1,0} parameter(1)
  %s = ((bf16[1024,512]{1,0}), bf16[256,512]{1,0:S(1)}, s32[]{:S(2)}) async-start(%w), calls=%rows
  %part = bf16[256,512]{1,0:S(1)} async-done(%s)
  ROOT %y = bf16[16,512]{1,0} dot(%x, %part), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""


def test_bytes_are_hbm_bytes_with_on_chip_buffers_left_out():
    """The TPU compiler prefetches a weight into VMEM (`S(1)`) with copy-start / copy-done, the
    matmul reads it there and writes its result there, and the result is evicted to HBM. XLA
    counts every operand and result whatever its memory (the weight 4 times, the matmul's VMEM
    accesses): HBM traffic is the weight read once, x read once and the result written once."""
    weight, x, y = 1024 * 512 * 2, 16 * 1024 * 2, 16 * 512 * 2
    count = aot.count_loops(ON_CHIP_PROGRAM)
    assert count.as_compiled.bytes >= 4 * weight + x
    assert count.total.bytes == weight + x + y
    assert count.total.flops == count.as_compiled.flops == 2 * 16 * 1024 * 512
    from r1.aot.memory_spaces import shape_bytes

    assert shape_bytes("(bf16[4,8]{1,0:T(8,128)(2,1)S(1)}, f32[2]{0}, u32[]{:S(2)})") == (8.0, 68.0)
    # The v5e compiler prefetches with async slices instead, which XLA's model cannot cost:
    # the slice moved into VMEM is read from HBM once; the matmul reads x and writes y.
    # (XLA's model gives each custom call, here the stubbed async pair, a cost of -1.)
    count = aot.count_loops(SLICE_PREFETCH_PROGRAM)
    assert count.total.bytes == pytest.approx(256 * 512 * 2 + 16 * 256 * 2 + 16 * 512 * 2, abs=2)


def test_dumped_compiles_bypass_a_persistent_compilation_cache(tmp_path):
    """With `JAX_COMPILATION_CACHE_DIR` set (as users set it on TPU VMs) a second compile of a
    program would load the cached executable, and the compiler would dump no buffer
    assignment; the AOT reports' compiles turn the persistent cache off, and leave it on."""
    from jax.experimental.compilation_cache import compilation_cache

    from r1.aot.cost import compile_dumped
    from r1.aot.hlo_buffers import read_dump

    settings = {
        "jax_compilation_cache_dir": str(tmp_path / "cache"),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    before = {name: getattr(jax.config, name) for name in settings}
    lowered = jax.jit(lambda x: jnp.tanh(x @ x.T).sum()).lower(jnp.ones((8, 16)))
    try:
        for name, value in settings.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
        lowered.compile()  # fills the cache
        assert any((tmp_path / "cache").iterdir())
        for run in ("first", "second"):
            compile_dumped(lowered, str(tmp_path / run))
            assert "allocation" in read_dump(str(tmp_path / run), "buffer-assignment.txt"), run
            assert "ENTRY" in read_dump(str(tmp_path / run), "after_optimizations.txt"), run
        assert jax.config.jax_enable_compilation_cache
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()

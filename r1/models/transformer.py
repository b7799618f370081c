"""Decoder-only transformer hosting Llama, Qwen2/2.5 and DeepSeek-V3 (MLA + DeepSeekMoE)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1.models.attention import Attention, SegmentMask
from r1.models.config import ModelConfig
from r1.models.layers import MLP, Embed, RMSNorm, dtype_of, key_stream, param
from r1.models.moe import MoE, RoutingStats
from r1.sharding import shard

REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass
class ModelOutput:
    """Everything a forward pass produces.

    logits: float32[B, T, V] (None when the forward ran with `compute_logits=False`).
    hidden: float[B, T, D] after the final norm.
    moe: per MoE layer in forward order, its `r1.models.moe.RoutingStats` (empty for dense
    models).
    mtp_logits: per multi-token-prediction depth k (1-based), float32[B, T, V] predicting token
    t + 1 + k at position t (empty unless requested, and empty with `compute_logits=False`).
    mtp_hidden: per depth, the MTP module's normed hidden float[B, T, D] those logits come from
    (with `with_mtp`).
    """

    logits: jax.Array | None
    hidden: jax.Array
    moe: list[RoutingStats] = dataclasses.field(default_factory=list)
    mtp_logits: list[jax.Array] = dataclasses.field(default_factory=list)
    mtp_hidden: list[jax.Array] = dataclasses.field(default_factory=list)


jax.tree_util.register_dataclass(
    ModelOutput,
    data_fields=["logits", "hidden", "moe", "mtp_logits", "mtp_hidden"],
    meta_fields=[],
)


def _make_attention(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.attention_type == "mla":
        from r1.models.mla import MLAttention

        return MLAttention(cfg, rngs)
    return Attention(cfg, rngs)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)) with a dense MLP or an MoE."""

    def __init__(self, cfg: ModelConfig, layer_index: int, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype)
        self.attn = _make_attention(cfg, rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype)
        self.is_moe = cfg.is_moe_layer(layer_index)
        if self.is_moe:
            self.mlp = MoE(cfg, rngs)
        else:
            self.mlp = MLP(cfg, cfg.intermediate_size, rngs)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        token_mask: jax.Array,
        replay: jax.Array | None = None,
    ) -> tuple[jax.Array, RoutingStats | None]:
        """x: float[B, T, D] -> (float[B, T, D], its RoutingStats; None for a dense layer).
        replay: optional int[B, T, k] recorded experts for an MoE layer (`MoE.__call__`)."""
        x = x + self.attn(self.input_norm(x), positions, mask)
        x = shard(x, ("batch", "length", "act_embed"))
        stats = None
        h = self.post_attn_norm(x)
        if self.is_moe:
            h, stats = self.mlp(h, token_mask, replay)
        else:
            h = self.mlp(h)
        x = shard(x + h, ("batch", "length", "act_embed"))
        return x, stats


def stack_variables(modules: list[nnx.Module]) -> nnx.Module:
    """The first of `modules` (same structure) holding every variable stacked along a new
    leading axis named "layers" (logical-axis metadata updated). The others are discarded."""
    target = modules[0]
    states = [nnx.state(m) for m in modules]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    nnx.update(target, stacked)
    for _, variable in nnx.iter_graph(target):
        if isinstance(variable, nnx.Variable):
            axes = variable.get_metadata().get("axes")
            if axes is not None:
                variable.set_metadata(axes=("layers", *axes))
    return target


def flat_variables(state: nnx.State) -> dict[tuple[Any, ...], nnx.Variable]:
    """{path: Variable} of a state, a path being the tuple of attribute names and list
    indices from the model's root (e.g. ("layers", 0, "attn", "q_proj"))."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )[0]:
        flat[tuple(p.key if hasattr(p, "key") else p.idx for p in path)] = leaf
    return flat


class LayerStack(nnx.Module):
    """`count` consecutive decoder layers of one kind (dense or MoE) as one `DecoderLayer` whose
    variables carry a leading axis of size `count` ("layers", replicated by the sharding
    rules), run with `lax.scan`: the compiled program holds the layer's code once.

    `layer(i)` is not needed by the forward pass; `state_of(i)` / the HF converters slice it.
    """

    def __init__(self, cfg: ModelConfig, first: int, count: int, rngs: nnx.Rngs):
        self.first, self.count = first, count
        self.is_moe = cfg.is_moe_layer(first)
        self.layer = stack_variables([DecoderLayer(cfg, first + j, rngs) for j in range(count)])

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: SegmentMask,
        token_mask: jax.Array,
        policy: str,
        replay: jax.Array | None = None,
    ) -> tuple[jax.Array, list[RoutingStats]]:
        """x: float[B, T, D] -> (float[B, T, D], per layer its RoutingStats; [] if dense).
        replay: optional int[count, B, T, k], each MoE layer's recorded experts."""
        graphdef, state = nnx.split(self.layer)

        def body(x, scanned):
            layer_state, layer_replay = scanned
            return nnx.merge(graphdef, layer_state)(x, positions, mask, token_mask, layer_replay)

        if policy != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[policy])
        x, stats = jax.lax.scan(body, x, (state, replay))
        per_layer = [jax.tree.map(lambda s, j=j: s[j], stats) for j in range(self.count)]
        return x, per_layer if stats is not None else []


class MTPModule(nnx.Module):
    """DeepSeek-V3 multi-token prediction depth: h' = block(eh_proj([enorm(emb); hnorm(h)]))."""

    def __init__(self, cfg: ModelConfig, layer_index: int, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.enorm = RMSNorm(d, cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype)
        self.eh_proj = param(rngs, (2 * d, d), (None, "embed"), cfg.param_dtype)
        self.block = DecoderLayer(cfg, layer_index, rngs)
        self.final_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype)
        self.dtype = cfg.dtype

    def __call__(self, hidden, next_embeddings, positions, mask, token_mask):
        joined = jnp.concatenate([self.enorm(next_embeddings), self.hnorm(hidden)], axis=-1)
        h = jnp.einsum("btc,cd->btd", joined, self.eh_proj[...].astype(dtype_of(self.dtype)))
        h, stats = self.block(h, positions, mask, token_mask)
        return h, self.final_norm(h), stats


class Transformer(nnx.Module):
    """The language model. `model(tokens)` -> logits float32[B, T, V]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        rngs = key_stream(rngs)
        self.config = cfg
        self.embed = Embed(cfg, rngs)
        if cfg.scan_layers:
            self.layers = nnx.List(
                [LayerStack(cfg, first, n, rngs) for first, n in cfg.layer_groups()]
            )
        else:
            self.layers = nnx.List([DecoderLayer(cfg, i, rngs) for i in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = param(
                rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.param_dtype
            )
        self.mtp = nnx.List(
            [MTPModule(cfg, cfg.num_layers + k, rngs) for k in range(cfg.num_mtp_layers)]
        )

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """hidden: float[B, T, D] (normed) -> float32[B, T, V]."""
        if self.config.tie_word_embeddings:
            logits = self.embed.attend(hidden)
        else:
            w = self.lm_head[...].astype(dtype_of(self.config.dtype))
            logits = jnp.einsum("btd,dv->btv", hidden, w)
        return shard(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

    def forward(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        with_mtp: bool = False,
        compute_logits: bool = True,
        routes: jax.Array | None = None,
    ) -> ModelOutput:
        """Full forward pass.

        tokens: int32[B, T]. positions: int32[B, T] (default 0..T-1). segment_ids: int32[B, T],
        attention stays within equal ids (packing; default one segment). attention_mask:
        bool/int[B, T], 0 marks padding that no token attends to. with_mtp: also run the
        multi-token-prediction modules. compute_logits: False skips the [B, T, V] logits
        (`logits` is None; take log-probs from `hidden`, e.g. with
        `r1.rl.grpo.chunked_token_logprobs(hidden, model.logits_from_hidden, ...)`). routes:
        optional int[B, T, M, k] recorded experts of the M = `ModelConfig.num_moe_layers`
        MoE decoder layers in forward order (routing replay, `MoE.__call__`; -1 rows route
        themselves); the MTP modules always route themselves.

        Attention gets the mask in factored form (`SegmentMask`), so sequences longer than
        `attention_block_size` never build a [T, T] mask or score matrix.
        """
        cfg = self.config
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if attention_mask is None:
            token_mask = jnp.ones((b, t), bool)
        else:
            token_mask = attention_mask.astype(bool)
        mask = SegmentMask(segment_ids.astype(jnp.int32), token_mask)
        x = shard(self.embed(tokens), ("batch", "length", "act_embed"))
        moe_stats: list[RoutingStats] = []
        moe_index = 0
        for layer in self.layers:
            count = layer.count if isinstance(layer, LayerStack) else 1
            replay = None
            if routes is not None and layer.is_moe:
                replay = jnp.moveaxis(routes[:, :, moe_index : moe_index + count], 2, 0)
                moe_index += count
            if isinstance(layer, LayerStack):
                x, stacked = layer(x, positions, mask, token_mask, cfg.remat_policy, replay)
                moe_stats.extend(stacked)
                continue
            replay = None if replay is None else replay[0]
            x, stats = _run_layer(layer, x, positions, mask, token_mask, cfg.remat_policy, replay)
            if stats is not None:
                moe_stats.append(stats)
        hidden = self.final_norm(x)
        logits = self.logits_from_hidden(hidden) if compute_logits else None
        mtp_logits, mtp_hidden = [], []
        if with_mtp and len(self.mtp):
            h = x
            for k, module in enumerate(self.mtp, start=1):
                shifted = jnp.concatenate([tokens[:, k:], jnp.zeros((b, k), tokens.dtype)], axis=1)
                h, normed, stats = module(h, self.embed(shifted), positions, mask, token_mask)
                if stats is not None:
                    moe_stats.append(stats)
                mtp_hidden.append(normed)
                if compute_logits:
                    mtp_logits.append(self.logits_from_hidden(normed))
        return ModelOutput(
            logits=logits,
            hidden=hidden,
            moe=moe_stats,
            mtp_logits=mtp_logits,
            mtp_hidden=mtp_hidden,
        )

    def __call__(self, tokens: jax.Array, **kwargs: Any) -> jax.Array:
        """tokens: int32[B, T] -> logits float32[B, T, V]; keyword arguments as `forward`."""
        return self.forward(tokens, **kwargs).logits


def unstack_layers(model: Transformer) -> Transformer:
    """`model` with each `LayerStack` split into its separate `DecoderLayer`s.

    The result has `config.scan_layers=False` and the same variables (layer i's are slice i of
    its block's stacked arrays), so it computes exactly what `model` does; its compiled program
    holds each layer's code once per layer instead of once per block. The sampler decodes
    from it (`SamplingConfig.unstack_layers`): inside the decode loop a scanned block is an
    inner loop whose every iteration slices one layer's weights and KV cache out of the stacked
    arrays, which on an H200 made Qwen2.5-0.5B decode 1.7x slower than with separate layers.
    Returns `model` itself when it has no scanned blocks. Works under `jax.jit` (the slices
    keep their shardings); outside it the slices are new arrays, a copy of the layer weights.
    """
    cfg = model.config
    if not cfg.scan_layers:
        return model
    flat_cfg = cfg.replace(scan_layers=False)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(flat_cfg, rngs=nnx.Rngs(0))))
    source = flat_variables(nnx.state(model))
    block_of = {}
    for block, (first, count) in enumerate(cfg.layer_groups()):
        for j in range(count):
            block_of[first + j] = (block, j)
    for path, variable in flat_variables(state).items():
        if path[0] == "layers":
            block, j = block_of[path[1]]
            value = source[("layers", block, "layer", *path[2:])].get_value()[j]
        else:
            value = source[path].get_value()
        variable.set_value(value)
    return nnx.merge(graphdef, state)


def _run_layer(layer, x, positions, mask, token_mask, policy: str, replay=None):
    if policy == "none":
        return layer(x, positions, mask, token_mask, replay)
    # A plain jax.checkpoint over the layer's state: the forward pass mutates nothing, and
    # nnx.remat's state write-back fails when the layer mixes variables of different traces
    # (parameters under jax.grad, MoE routing biases closed over from the enclosing step).
    graphdef, state = nnx.split(layer)

    def run(state, *args):
        return nnx.merge(graphdef, state)(*args)

    remat = jax.checkpoint(run, policy=REMAT_POLICIES[policy])
    return remat(state, x, positions, mask, token_mask, replay)

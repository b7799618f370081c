"""SFT: loss masking, packing, gradient accumulation, memorisation, data iterator, trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1 import configlib, sharding, testing
from r1.models import hf
from r1.models.transformer import Transformer
from r1.sft import data as sft_data
from r1.sft import step as sft_step
from r1.sft.config import parse as parse_sections
from r1.sft.trainer import TIMING_KEYS, train_sft
from r1.train.state import init_train_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = testing.DummyTokenizer()


def _examples(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = "q" + "".join(rng.choice(list("abcdef"), size=int(rng.integers(3, 9))))
        response = " ".join(str(int(x)) for x in rng.integers(0, 99, size=int(rng.integers(1, 6))))
        row = sft_data.sft_row({"prompt": prompt, "response": response, "source": f"run-{i}"})
        out.append(sft_data.encode_example(*sft_data.render_example(row, template="none"), TOK))
    return out


def _jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _model(cfg, seed=0):
    return Transformer(cfg, rngs=nnx.Rngs(seed))


# ----------------------------------------------------------------------------- data
def test_encode_example_masks_prompt_and_appends_eos():
    ex = sft_data.encode_example("ab", "cd", TOK)
    assert ex["tokens"].tolist() == [TOK.bos_id, 100, 101, 102, 103, TOK.eos_id]
    assert ex["loss_mask"].tolist() == [False, False, False, True, True, True]


def test_rows_with_reasoning_and_answer_are_rendered():
    row = sft_data.sft_row({"prompt": "1+2", "reasoning": "1+2=3", "answer": "3"})
    prompt, response = sft_data.render_example(row)
    assert prompt.endswith("User: 1+2. Assistant:")
    assert response == " <think>1+2=3</think> <answer>3</answer>"
    _, think = sft_data.render_example(row, template="qwen", response_format="think")
    assert think == "1+2=3\n</think>\n\n3"
    with pytest.raises(sft_data.RowError, match="response"):
        sft_data.sft_row({"prompt": "x"})
    with pytest.raises(sft_data.RowError, match="prompt"):
        sft_data.sft_row({"response": "x"})


def test_packing_keeps_examples_whole_with_their_own_positions():
    examples = _examples(9)
    batch, used = sft_data.pack(examples, batch_size=3, seq_len=40, pad_id=TOK.pad_id)
    assert 3 < used <= 9
    seen = []
    for r in range(3):
        segs = batch["segment_ids"][r]
        for s in range(1, segs.max() + 1):
            where = np.flatnonzero(segs == s)
            assert (np.diff(where) == 1).all()  # contiguous
            assert batch["positions"][r, where].tolist() == list(range(len(where)))
            seen.append(batch["tokens"][r, where].tolist())
        assert (batch["tokens"][r][segs == 0] == TOK.pad_id).all()
        assert not batch["loss_mask"][r][segs == 0].any()
    assert sorted(seen) == sorted(e["tokens"].tolist() for e in examples[:used])


def _dense_mtp():
    """A tiny Qwen2-style model with one MTP depth (fast to compile on CPU)."""
    return testing.tiny_dense_config(vocab_size=TOK.vocab_size, num_mtp_layers=1)


@jax.jit
def _losses(model, batch):
    out = sft_step.forward(model, batch, with_mtp=True)
    return sft_step.sft_loss(out, batch, mtp_weight=0.3)


def test_packed_and_unpacked_batches_give_the_same_loss():
    """Same examples, packed in 2 rows vs one per row: identical loss, next-token and MTP parts,
    for a dense model with an MTP depth."""
    model = _model(_dense_mtp())
    examples = _examples(6, seed=1)
    packed, used = sft_data.pack(examples, batch_size=2, seq_len=64, pad_id=TOK.pad_id)
    assert used == 6 and (packed["segment_ids"].max(axis=1) > 1).all()
    unpacked = sft_data.pad(examples, batch_size=6, seq_len=32, pad_id=TOK.pad_id)
    (loss_p, parts_p), (loss_u, parts_u) = (_losses(model, _jnp(b)) for b in (packed, unpacked))
    np.testing.assert_allclose(loss_p, loss_u, rtol=2e-5)
    for key in ("loss/next_token", "loss/mtp", "token_accuracy"):
        np.testing.assert_allclose(parts_p[key], parts_u[key], rtol=2e-5, err_msg=key)
    assert float(parts_p["loss/mtp"]) > 0


@pytest.mark.slow
def test_packed_and_unpacked_match_for_mla_moe():
    """The same with MLA, MoE and MTP; the MoE balance loss is per sequence by design, so only
    the next-token and MTP parts are compared."""
    model = _model(testing.tiny_moe_config(vocab_size=TOK.vocab_size))
    examples = _examples(6, seed=1)
    packed, _ = sft_data.pack(examples, batch_size=2, seq_len=64, pad_id=TOK.pad_id)
    unpacked = sft_data.pad(examples, batch_size=6, seq_len=32, pad_id=TOK.pad_id)
    (_, parts_p), (_, parts_u) = (_losses(model, _jnp(b)) for b in (packed, unpacked))
    for key in ("loss/next_token", "loss/mtp", "token_accuracy"):
        np.testing.assert_allclose(parts_p[key], parts_u[key], rtol=2e-5, err_msg=key)


def test_prompt_and_padding_targets_get_zero_gradient():
    """d loss / d logits is zero wherever the next token is not a response token of the same
    example (prompt, padding, the next packed example), and nonzero on response targets."""
    batch = _jnp(sft_data.pack(_examples(5, seed=2), 2, 64, TOK.pad_id)[0])
    out = jax.jit(lambda m, b: sft_step.forward(m, b, with_mtp=True))(_model(_dense_mtp()), batch)

    def loss_of(logits, mtp_logits):
        o = out.__class__(logits=logits, hidden=out.hidden, moe=out.moe, mtp_logits=mtp_logits)
        return sft_step.sft_loss(o, batch, mtp_weight=0.5)[0]

    g_main, g_mtp = jax.grad(loss_of, argnums=(0, 1))(out.logits, out.mtp_logits)
    for shift, g in ((1, g_main), (2, g_mtp[0])):
        per_position = np.abs(np.asarray(g)).sum(-1)  # [B, T]
        targets = np.zeros_like(per_position, bool)
        targets[:, :-shift] = np.asarray(
            sft_step.target_mask(batch["loss_mask"], batch["segment_ids"], shift)
        )
        assert (per_position[~targets] == 0).all()
        assert (per_position[targets] > 0).all()
    # Changing prompt tokens' targets (the prompt tokens themselves) leaves the masked NLL of
    # the logits untouched: the loss only reads response targets.
    mask = np.asarray(batch["loss_mask"])
    other = np.where(mask, np.asarray(batch["tokens"]), 7)
    other_batch = {**batch, "tokens": jnp.asarray(other)}
    a = sft_step.sft_loss(out, batch)[1]["loss/next_token"]
    b = sft_step.sft_loss(out, other_batch)[1]["loss/next_token"]
    assert float(a) == float(b)


def test_gradient_accumulation_equals_the_full_batch_gradient():
    graphdef, params, extra = nnx.split(_model(_dense_mtp()), nnx.Param, ...)
    # Uneven target counts per row: accumulation must weight by tokens, not by micro-batch.
    batch = _jnp(sft_data.pad(_examples(8, seed=3), 8, 32, TOK.pad_id))
    results = {}
    for m in (1, 4):
        config = sft_step.SFTConfig(num_microbatches=m, mtp_weight=0.3)
        fn = jax.jit(lambda p, b, c=config: sft_step.sft_grads(graphdef, p, extra, b, c)[:2])
        results[m] = fn(params, batch)
    (g1, m1), (g4, m4) = results[1], results[4]
    for key in ("loss", "loss/next_token", "loss/mtp", "token_accuracy", "target_tokens"):
        np.testing.assert_allclose(m1[key], m4[key], rtol=1e-5, err_msg=key)
    leaves1, leaves4 = jax.tree.leaves(g1), jax.tree.leaves(g4)
    assert len(leaves1) == len(leaves4) > 10
    for x, y in zip(leaves1, leaves4):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
    assert max(float(jnp.abs(x).max()) for x in leaves1) > 1e-3


@pytest.mark.parametrize("chunk", [5, 32])
def test_chunked_logits_give_the_same_loss_and_gradient(chunk):
    """With `logits_chunk_size` the SFT step never builds [B, T, V] logits (main head and MTP
    head take their losses from hidden states, `chunk` positions at a time; 5 does not divide
    the 31 target positions): loss, its parts, accuracy and every gradient equal the
    full-logits step's."""
    batch = _jnp(sft_data.pack(_examples(6, seed=5), 4, 32, TOK.pad_id)[0])
    config = sft_step.SFTConfig(num_microbatches=2, mtp_weight=0.3)
    results = {}
    for size in (0, chunk):
        model = _model(_dense_mtp().replace(logits_chunk_size=size))
        graphdef, params, extra = nnx.split(model, nnx.Param, ...)
        fn = jax.jit(lambda p, b, g=graphdef, e=extra: sft_step.sft_grads(g, p, e, b, config)[:2])
        results[size] = fn(params, batch)
    (g_full, m_full), (g_chunk, m_chunk) = results[0], results[chunk]
    for key in ("loss", "loss/next_token", "loss/mtp", "token_accuracy", "target_tokens"):
        np.testing.assert_allclose(m_chunk[key], m_full[key], rtol=1e-5, err_msg=key)
    assert float(m_full["loss/mtp"]) > 0
    for x, y in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_full), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)


def test_sft_loss_without_logits_needs_the_unembedding():
    batch = _jnp(sft_data.pack(_examples(2, seed=6), 1, 32, TOK.pad_id)[0])
    model = _model(_dense_mtp())
    out = sft_step.forward(model, batch, compute_logits=False)
    assert out.logits is None
    with pytest.raises(ValueError, match="unembed_fn"):
        sft_step.sft_loss(out, batch)
    loss, _ = sft_step.sft_loss(out, batch, unembed_fn=model.logits_from_hidden)
    full, _ = sft_step.sft_loss(sft_step.forward(model, batch), batch)
    np.testing.assert_allclose(loss, full, rtol=1e-6)


def test_sharded_step_matches_one_device(devices):
    cfg = testing.tiny_dense_config(vocab_size=TOK.vocab_size, num_layers=1, num_mtp_layers=1)
    batch_np = sft_data.pack(_examples(12, seed=4), 8, 32, TOK.pad_id)[0]
    config = sft_step.SFTConfig(num_microbatches=2, mtp_weight=0.3)
    optimizer = optax.adamw(1e-3)
    results = []
    for devs, mesh_cfg in (
        (devices[:1], sharding.MeshConfig()),
        (devices, sharding.MeshConfig(data=2, fsdp=2, tensor=2)),
    ):
        mesh = sharding.make_mesh(mesh_cfg, devs)
        model = sharding.create_sharded_model(lambda: _model(cfg), mesh)
        graphdef, state = init_train_state(model, optimizer, 0, with_reference=False)
        fn = sft_step.make_sft_step(
            graphdef,
            optimizer,
            config,
            mesh,
            state,
            batch_np,
            bias_update_rate=cfg.bias_update_rate,
        )
        shardings = sft_step.batch_shardings(batch_np, mesh)
        batch = {k: jax.device_put(v, shardings[k]) for k, v in batch_np.items()}
        with sharding.use_mesh(mesh):
            state, metrics = fn(state, batch)
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    for key in ("loss", "grad_norm", "loss/mtp"):
        np.testing.assert_allclose(results[0][0][key], results[1][0][key], rtol=1e-4, err_msg=key)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_tiny_model_memorises_four_examples():
    """4 prompt/response pairs, 300 full-batch steps: the response loss falls below 0.05 nats
    per token (from ~5.5 at initialisation)."""
    cfg = testing.tiny_dense_config(vocab_size=TOK.vocab_size)
    graphdef, params, extra = nnx.split(_model(cfg), nnx.Param, ...)
    batch = _jnp(sft_data.pack(_examples(4, seed=5), 2, 48, TOK.pad_id)[0])
    optimizer = optax.adam(3e-3)
    from r1.train.state import TrainState

    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        extra=extra,
        opt_state=optimizer.init(params),
        rng=jnp.zeros((2,), jnp.uint32),
    )
    fn = jax.jit(sft_step.sft_step_fn(graphdef, optimizer, sft_step.SFTConfig()))
    losses = []
    for _ in range(300):
        state, metrics = fn(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] > 4.0
    assert losses[-1] < 0.05, losses[::50]
    assert float(metrics["token_accuracy"]) == 1.0


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt": f"p{i}" + "x" * int(rng.integers(0, 12)),
            "response": "r" * int(rng.integers(1, 20)),
            "model": "ckpt-1",
            "reward": 1.0,
        }
        for i in range(n)
    ]


def _dataset(rows, **kwargs):
    defaults = dict(
        batch_size=2,
        seq_len=40,
        template="none",
        seed=0,
        shuffle=True,
        num_threads=1,
        process_index=0,
        process_count=1,
    )
    defaults.update(kwargs)
    return sft_data.sft_dataset(_Rows(rows), TOK, **defaults)


def test_iterator_resumes_exactly_including_the_example_left_over():
    ds = _dataset(_rows(40))
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    restored = iter(ds)
    restored.set_state(json.loads(json.dumps(state)))
    for want in expected:
        got = next(restored)
        for k in sft_data.BATCH_KEYS:
            np.testing.assert_array_equal(got[k], want[k])
    assert restored.stats() == it.stats()


def test_bad_rows_are_skipped_and_counted_and_all_bad_rows_fail():
    rows = _rows(10) + [{"prompt": "no response"}, {"prompt": "p", "response": "y" * 100}]
    it = iter(_dataset(rows, num_epochs=1, shuffle=False, pack_examples=False))
    batches = list(it)
    stats = it.stats()
    assert stats["examples"] == 10 and len(batches) == 5
    assert stats["skipped/too long"] == 1
    assert stats["skipped/missing field 'response'"] == 1
    with pytest.raises(ValueError, match="too long"):
        next(iter(_dataset([{"prompt": "p", "response": "y" * 100}] * 3, num_epochs=1)))
    with pytest.raises(ValueError, match="consecutive"):
        next(iter(_dataset([{"prompt": "p", "response": "y" * 100}] * 3, max_consecutive_skips=5)))


def test_load_rows_reads_traces_and_counts_bad_lines(tmp_path):
    path = tmp_path / "traces.jsonl"
    lines = [json.dumps(r) for r in _rows(3)]
    lines += ["{not json", json.dumps({"prompt": "only"}), json.dumps({"response": "x"})]
    path.write_text("\n".join(lines) + "\n")
    rows, reports = sft_data.load_rows(str(path))
    assert len(rows) == 3 and set(rows[0]) == {"prompt", "response", "id"}
    assert reports[0].num_skipped == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: no usable SFT row"):
        sft_data.load_rows(str(bad))


# ----------------------------------------------------------------------------- trainer
def _fast_config(**train):
    """configs/sft.py:tiny with a random-init 2-layer dense model (fast to compile)."""
    config = configlib.load_config("configs/sft.py:tiny")
    config.init.hf_path = ""
    config.model = configlib.model_dict(
        dict(
            family="qwen2",
            vocab_size=384,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            num_kv_heads=1,
            head_dim=16,
            intermediate_size=64,
            max_position_embeddings=512,
            attention_bias=True,
        )
    )
    config.data.task_kwargs.max_terms = 4
    config.data.seq_len = 96
    config.sft.batch_size = 4
    config.eval.every = 0
    config.train.update(train)
    return config


def _metric_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_trainer_writes_metrics_checkpoints_and_an_export(tmp_path):
    last = train_sft(_fast_config(steps=2, checkpoint_every=1), str(tmp_path))
    rows = _metric_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert last["loss"] == rows[-1]["loss"] and np.isfinite(last["loss"])
    assert rows[-1]["data/examples"] > rows[0]["data/examples"] >= 4
    assert 0 < rows[-1]["packing_efficiency"] <= 1
    for name in (
        "curves.png",
        "config.json",
        "export/model.safetensors",
        "export/demo_tokenizer.json",
        "checkpoints/2",
    ):
        assert (tmp_path / name).exists(), name
    cfg, model = hf.load(str(tmp_path / "export"))
    assert cfg.num_layers == 2 and cfg.hidden_size == 32
    init = _model(cfg, seed=0)  # the run's initialisation (seed 0): training moved it
    assert not np.allclose(model.embed.embedding[...], init.embed.embedding[...])


@pytest.mark.slow
def test_resume_reproduces_the_unbroken_run(tmp_path):
    """4 steps unbroken vs 2 steps, then the same workdir resumed to 4: identical metrics
    (data position included); the export is written only by a finished run."""
    unbroken = tmp_path / "unbroken"
    train_sft(_fast_config(steps=4, checkpoint_every=2), str(unbroken))
    expected = _metric_rows(unbroken)
    assert [r["step"] for r in expected] == [1, 2, 3, 4]
    broken = tmp_path / "broken"
    train_sft(_fast_config(steps=2, checkpoint_every=2, export=False), str(broken))
    assert not (broken / "export").exists()
    train_sft(_fast_config(steps=4, checkpoint_every=2), str(broken))
    assert _metric_rows(broken) == expected
    assert (broken / "export" / "model.safetensors").exists()


def test_config_sections_are_validated():
    sections = parse_sections(configlib.load_config("configs/sft.py:tiny"))
    assert sections.data.source == "procedural" and sections.sft.num_microbatches == 2
    config = configlib.load_config("configs/sft.py:qwen2_5_1_5b_traces")
    with pytest.raises(ValueError, match="config.data: files"):
        parse_sections(config)
    config = configlib.load_config("configs/sft.py:tiny")
    config.sft.num_microbatches = 3
    with pytest.raises(ValueError, match="config.sft.*divisible"):
        parse_sections(config)
    config = configlib.load_config("configs/sft.py:tiny")
    config.data.template = "chatml"
    with pytest.raises(ValueError, match="config.data.*template"):
        parse_sections(config)


@pytest.mark.slow
def test_experiments_sft_tiny_runs(tmp_path):
    """The documented tiny command (demo base, procedural traces) end to end, shortened."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sft",
            "--config=configs/sft.py:tiny",
            f"--workdir={tmp_path}",
            "--config.train.steps=10",
            "--config.eval.every=10",
            "--config.eval.per_difficulty=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _metric_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(11))
    assert rows[-1]["loss"] < 0.2 and "eval/accuracy" in rows[-1]
    assert (tmp_path / "export" / "model.safetensors").exists()

"""Reward model: Bradley-Terry loss, pair data, region masks, padding invariance, sharded
scoring, save/load, and held-out accuracy on a synthetic learnable rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import configlib, sharding
from r1.data.tokenizers import build_demo_tokenizer
from r1.logging import read_jsonl
from r1.rm import data as rm_data
from r1.rm import model as rm_model
from r1.rm.loss import bradley_terry_loss, bradley_terry_losses, pair_accuracy
from r1.rm.reward import (
    make_frozen_scorer,
    region_mask,
    score_completions,
    score_sequences,
    summary_mask,
)
from r1.rm.trainer import train_rm
from r1.testing import tiny_dense_config, tiny_moe_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLOSE = (7, 8)  # a two-token "</think>" for crafted rows


# ----------------------------------------------------------------------------- loss
def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_bradley_terry_loss_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    r_c = rng.normal(size=7).astype(np.float32) * 3
    r_r = rng.normal(size=7).astype(np.float32) * 3
    margin = np.abs(rng.normal(size=7)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1, 0, 1], bool)

    diff = r_c - r_r - margin
    per_pair = -_np_log_sigmoid(diff.astype(np.float64))
    np.testing.assert_allclose(
        bradley_terry_losses(jnp.asarray(r_c), jnp.asarray(r_r), jnp.asarray(margin)),
        per_pair,
        rtol=1e-5,
    )
    expected = per_pair[mask].mean()
    loss, (g_c, g_r) = jax.value_and_grad(
        lambda a, b: bradley_terry_loss(a, b, jnp.asarray(margin), jnp.asarray(mask)),
        argnums=(0, 1),
    )(jnp.asarray(r_c), jnp.asarray(r_r))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # d/d r_c of -log sigmoid(d) = -(1 - sigmoid(d)) = -sigmoid(-d), per masked pair / count.
    grad = -1.0 / (1.0 + np.exp(diff.astype(np.float64))) * mask / mask.sum()
    np.testing.assert_allclose(g_c, grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_r, -grad, rtol=1e-5, atol=1e-7)
    # No margin: the classic loss, log 2 at a tie; scalar margin broadcasts.
    np.testing.assert_allclose(bradley_terry_loss(jnp.zeros(3), jnp.zeros(3)), np.log(2), 1e-6)
    np.testing.assert_allclose(
        bradley_terry_loss(jnp.asarray(r_c), jnp.asarray(r_r), 0.5),
        (-_np_log_sigmoid((r_c - r_r - 0.5).astype(np.float64))).mean(),
        rtol=1e-5,
    )


def test_pair_accuracy_counts_ties_half_and_respects_mask():
    r_c = jnp.asarray([2.0, 0.0, 1.0, -1.0, 5.0])
    r_r = jnp.asarray([1.0, 0.0, 3.0, -2.0, 9.0])
    assert float(pair_accuracy(r_c, r_r)) == pytest.approx((1 + 0.5 + 0 + 1 + 0) / 5)
    mask = jnp.asarray([True, False, True, True, False])
    assert float(pair_accuracy(r_c, r_r, mask)) == pytest.approx(2 / 3)


def test_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="r_chosen and r_rejected"):
        bradley_terry_losses(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_losses(jnp.zeros(3), jnp.zeros(3), jnp.zeros(2))


# ----------------------------------------------------------------------------- region masks
def test_region_masks_on_crafted_rows():
    # columns: prompt (left-padded) | response (right-padded); 0 pads, CLOSE = 7 8.
    tokens = np.array(
        [
            [0, 11, 12, 20, 7, 8, 30, 31, 0],  # one </think>: summary = 30 31
            [0, 11, 12, 20, 7, 8, 21, 7, 8],  # two: summary after the LAST one = nothing
            [11, 12, 13, 20, 21, 22, 23, 0, 0],  # none
            [0, 0, 11, 20, 7, 9, 8, 33, 0],  # a broken tag (7 9 8) is no </think>
            [0, 11, 12, 7, 8, 40, 7, 8, 41],  # two: summary = 41
        ],
        np.int32,
    )
    mask = tokens != 0
    response = np.zeros_like(mask)
    response[:, 3:] = mask[:, 3:]
    prompt = mask & ~response

    summary = np.asarray(summary_mask(jnp.asarray(tokens), jnp.asarray(response), CLOSE))
    expected = np.zeros_like(mask)
    expected[0, 6:8] = True
    expected[4, 8] = True
    np.testing.assert_array_equal(summary, expected)

    fallback = np.asarray(
        summary_mask(jnp.asarray(tokens), jnp.asarray(response), CLOSE, missing="response")
    )
    expected_fallback = expected.copy()
    expected_fallback[2] = response[2]
    expected_fallback[3] = response[3]
    np.testing.assert_array_equal(fallback, expected_fallback)

    helpful = np.asarray(
        region_mask(
            jnp.asarray(tokens),
            jnp.asarray(mask),
            jnp.asarray(response),
            region="summary",
            think_close=CLOSE,
        )
    )
    np.testing.assert_array_equal(helpful, prompt | expected)
    harmless = np.asarray(
        region_mask(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(response), region="whole")
    )
    np.testing.assert_array_equal(harmless, mask)
    # A </think> inside the prompt does not open a summary.
    in_prompt = np.array([[7, 8, 11, 20, 21, 0]], np.int32)
    r = np.array([[0, 0, 0, 1, 1, 0]], bool)
    assert not np.asarray(summary_mask(jnp.asarray(in_prompt), jnp.asarray(r), CLOSE)).any()
    with pytest.raises(ValueError, match="region"):
        region_mask(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(response), region="x")


def test_region_masks_with_demo_tokenizer_ids():
    tok = build_demo_tokenizer()
    close = tuple(tok.encode("</think>"))
    prompt = tok.encode("Q?", add_bos=True)
    response = tok.encode("<think>a</think>b</think> ok")
    tokens = jnp.asarray([prompt + response], jnp.int32)
    resp = jnp.asarray([[False] * len(prompt) + [True] * len(response)])
    summary = np.asarray(summary_mask(tokens, resp, close))[0]
    assert tok.decode(np.asarray(tokens)[0][summary].tolist()) == " ok"


# ----------------------------------------------------------------------------- the model
def _tiny_rm(cfg=None, seed=0):
    return rm_model.RewardModel(cfg or tiny_dense_config(), rngs=nnx.Rngs(seed))


_score = jax.jit(score_sequences)


@pytest.mark.parametrize("make_cfg", [tiny_dense_config, tiny_moe_config], ids=["dense", "moe"])
def test_scores_are_padding_invariant_and_regions_cut_exactly(make_cfg):
    model = _tiny_rm(make_cfg())
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, 100, size=5).tolist()
    thinking = rng.integers(10, 100, size=6).tolist()
    summary = rng.integers(10, 100, size=4).tolist()
    response = [*thinking, *CLOSE, *summary]
    seq = prompt + response
    width = len(seq) + 6

    def row(ids, left, pad_id, response_len):
        right = width - left - len(ids)
        tokens = [pad_id] * left + ids + [pad_id] * right
        mask = [False] * left + [True] * len(ids) + [False] * right
        resp = [False] * (left + len(ids) - response_len) + [True] * response_len
        return tokens, mask, resp + [False] * right

    packed = prompt + summary
    n = len(response)
    rows = [row(seq, 0, 0, n), row(seq, 3, 0, n), row(seq, 6, 0, n), row(seq, 2, 77, n)]
    rows.append(row(packed, 0, 0, 0))
    tokens = jnp.asarray([r[0] for r in rows], jnp.int32)
    mask = jnp.asarray([r[1] for r in rows])
    resp = jnp.asarray([r[2] for r in rows])
    whole = np.asarray(_score(model, tokens, mask, mask))
    # Left, right, mixed padding and junk pad ids: one score.
    np.testing.assert_allclose(whole[:4], whole[0], rtol=1e-5, atol=1e-5)
    # The helpfulness region reads prompt + summary as if the reasoning were never there:
    # the same score as the packed text (last row, read whole).
    regions = region_mask(tokens, mask, resp, region="summary", think_close=CLOSE)
    helpful = np.asarray(_score(model, tokens, mask, regions))
    np.testing.assert_allclose(helpful, whole[4], rtol=1e-5, atol=1e-5)
    assert abs(float(helpful[0]) - float(whole[0])) > 1e-4  # the region did change the input


def test_empty_rows_score_zero_and_shapes_are_checked():
    model = _tiny_rm()
    tokens = jnp.ones((2, 5), jnp.int32)
    mask = jnp.asarray([[True] * 5, [False] * 5])
    scores = np.asarray(_score(model, tokens, mask, mask))
    assert scores[1] == 0.0 and scores.dtype == np.float32
    with pytest.raises(ValueError, match="region_mask"):
        score_sequences(model, tokens, mask, jnp.ones((2, 4), bool))


def test_score_sequences_jits_sharded_on_8_devices(devices):
    cfg = tiny_dense_config()
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    model = sharding.create_sharded_model(lambda: _tiny_rm(cfg, seed=3), mesh)
    graphdef, rm_state = nnx.split(model)
    rng = np.random.default_rng(1)
    rows, plen, clen = 8, 6, 10
    prompt = rng.integers(10, 100, size=(rows, plen)).astype(np.int32)
    pmask = np.ones((rows, plen), bool)
    pmask[::2, :2] = False  # left padding
    completion = rng.integers(10, 100, size=(rows, clen)).astype(np.int32)
    completion[:, 4:6] = CLOSE
    cmask = np.ones((rows, clen), bool)
    cmask[1::2, 8:] = False
    eos = 99
    completion[0, 9] = eos

    scorer = make_frozen_scorer(graphdef, region="summary", think_close=CLOSE, eos_id=eos)
    batch_sh = sharding.named_sharding(("batch", None), (rows, plen), mesh)
    comp_sh = sharding.named_sharding(("batch", None), (rows, clen), mesh)
    state_sh = sharding.state_shardings(rm_state, mesh)
    out_sh = sharding.named_sharding(("batch",), (rows,), mesh)
    jitted = jax.jit(
        scorer,
        in_shardings=(state_sh, batch_sh, batch_sh, comp_sh, comp_sh),
        out_shardings=out_sh,
    )
    args = [
        jax.device_put(a, s)
        for a, s in zip((prompt, pmask, completion, cmask), (batch_sh, batch_sh, comp_sh, comp_sh))
    ]
    with sharding.use_mesh(mesh):
        sharded = jitted(rm_state, *args)
    assert sharded.sharding.spec[0] is not None  # the batch really is split
    # Reference: one device, the reasoning and EOS cut out by hand, rows right-padded.
    local = nnx.merge(graphdef, jax.device_get(rm_state))
    packed = []
    for i in range(rows):
        ids = [int(t) for t, m in zip(completion[i], cmask[i]) if m and t != eos]
        packed.append(prompt[i][pmask[i]].tolist() + ids[6:])
    ref_tokens = np.zeros((rows, plen + clen), np.int32)
    ref_mask = np.zeros((rows, plen + clen), bool)
    for i, ids in enumerate(packed):
        ref_tokens[i, : len(ids)] = ids
        ref_mask[i, : len(ids)] = True
    ref = _score(local, jnp.asarray(ref_tokens), jnp.asarray(ref_mask), jnp.asarray(ref_mask))
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(ref), atol=1e-4)
    # Frozen: no gradient reaches the reward model's parameters.
    host_args = [jnp.asarray(a) for a in (prompt, pmask, completion, cmask)]
    grads = jax.jit(jax.grad(lambda s: jnp.sum(scorer(s, *host_args))))(jax.device_get(rm_state))
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_save_load_roundtrip(tmp_path):
    model = _tiny_rm(seed=5)
    tokens = jnp.asarray(np.random.default_rng(2).integers(3, 120, size=(3, 9)), jnp.int32)
    mask = jnp.ones((3, 9), bool).at[1, 6:].set(False)
    before = np.asarray(_score(model, tokens, mask, mask))
    rm_model.save(model, str(tmp_path / "rm"), metadata={"region": "summary"})
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    assert (tmp_path / "rm" / rm_model.HEAD_FILE).is_file()
    assert rm_model.read_head_config(str(tmp_path / "rm"))["metadata"] == {"region": "summary"}
    _, loaded = rm_model.load(str(tmp_path / "rm"))
    after = np.asarray(_score(loaded, tokens, mask, mask))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    os.remove(tmp_path / "rm" / rm_model.HEAD_CONFIG)
    with pytest.raises(FileNotFoundError, match="reward_head.json"):
        rm_model.load(str(tmp_path / "rm"))


# ----------------------------------------------------------------------------- data
def test_read_pairs_skips_and_counts_bad_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"prompt": "p", "chosen": "a"}),
        json.dumps({"prompt": "p", "chosen": 3, "rejected": "b"}),
        json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}),
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}),
        json.dumps({**good, "margin": -1}),
        json.dumps({**good, "margin": "big"}),
        "",
        json.dumps({"prompt": "q", "chosen": "x", "rejected": "y", "extra": 1}),
    ]
    path.write_text("\n".join(lines) + "\n")
    pairs, skipped = rm_data.read_pairs(str(path))
    assert pairs == [
        rm_data.PreferencePair("p", "a", "b", 2.0),
        rm_data.PreferencePair("q", "x", "y", 0.0),
    ]
    assert skipped == {
        "bad_json": 1,
        "not_an_object": 1,
        "missing_rejected": 1,
        "non_string_chosen": 1,
        "empty_response": 1,
        "identical_responses": 1,
        "bad_margin": 2,
    }
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        rm_data.read_pairs(str(tmp_path / "nope.jsonl"))


def test_encode_pairs_masks_truncation_and_roundtrip(tmp_path):
    tok = build_demo_tokenizer()
    pairs = rm_data.synthetic_pairs(6, seed=1, rule="polite")
    path = tmp_path / "p.jsonl"
    rm_data.write_pairs(str(path), pairs)
    assert rm_data.read_pairs(str(path))[0] == pairs
    long_prompt = rm_data.PreferencePair("x" * 200, "ab", "cd")
    too_long = rm_data.PreferencePair("p", "y" * 200, "z")
    arrays, counts = rm_data.encode_pairs(
        [*pairs, long_prompt, too_long], tok, max_length=128, template="raw"
    )
    assert counts == {"prompt_truncated": 1, "too_long": 1}
    assert arrays["chosen_tokens"].shape == (7, 128) and arrays["margin"].shape == (7,)
    for i, pair in enumerate(pairs):
        for side, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            toks = arrays[f"{side}_tokens"][i]
            assert tok.decode(toks[arrays[f"{side}_response"][i]].tolist()) == text
            prompt_part = arrays[f"{side}_mask"][i] & ~arrays[f"{side}_response"][i]
            assert toks[prompt_part][0] == tok.bos_id
            assert tok.decode(toks[prompt_part].tolist()) == pair.prompt
            assert not arrays[f"{side}_mask"][i][arrays[f"{side}_mask"][i].sum() :].any()
    assert arrays["chosen_mask"][6].all()  # the truncated prompt fills the row exactly
    with pytest.raises(ValueError, match="template"):
        rm_data.encode_pairs(pairs, tok, max_length=64, template="chatml")


def test_synthetic_pairs_follow_their_rules():
    polite = rm_data.synthetic_pairs(50, seed=3, rule="polite")
    assert polite == rm_data.synthetic_pairs(50, seed=3, rule="polite")
    for p in polite:
        assert p.chosen.endswith(rm_data.POLITE) and p.rejected.endswith(rm_data.CURT)
        assert p.chosen.split("</think>")[0] == p.rejected.split("</think>")[0]
    for p in rm_data.synthetic_pairs(50, seed=3, rule="arithmetic"):
        a, b = (int(x) for x in p.prompt[len("What is ") : -1].split(" + "))
        assert p.chosen.endswith(f"The answer is {a + b}.")
        assert not p.rejected.endswith(f"The answer is {a + b}.")
    with pytest.raises(ValueError, match="rule"):
        rm_data.synthetic_pairs(1, seed=0, rule="nice")


# ----------------------------------------------------------------------------- training
def _tiny_config(**train):
    config = configlib.load_config(os.path.join(REPO, "configs/reward_model.py:tiny"))
    config.unlock()
    config.data.synthetic.update(num_train=320, num_eval=128)
    config.optimizer.update(learning_rate=3e-3, warmup_steps=5)
    config.train.update(**train)
    config.eval.update(every=20, batch_size=128)
    config.lock()
    return config


def test_train_rm_learns_the_rule_and_exports(tmp_path):
    workdir = str(tmp_path / "rm")
    config = _tiny_config(steps=20, batch_size=16, checkpoint_every=20, log_every=5)
    final = train_rm(config, workdir)
    # Measured: held-out pair accuracy 1.0 after 20 steps of 16 pairs (0.5 before training).
    assert final["eval/accuracy"] > 0.9
    report = json.load(open(os.path.join(workdir, "rm_eval.json")))
    assert report["accuracy"] == final["eval/accuracy"] and report["pairs"] == 128
    assert report["region"] == "summary" and report["step"] == 20
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20]
    assert rows[0]["eval/accuracy"] < 0.9  # it had to learn
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "20"))
    # The export scores held-out pairs through the GRPO-side path to the same accuracy.
    _, model = rm_model.load(os.path.join(workdir, "export"))
    assert rm_model.read_head_config(os.path.join(workdir, "export"))["metadata"]["region"] == (
        "summary"
    )
    tok = build_demo_tokenizer()
    pairs, _ = rm_data.read_pairs(os.path.join(workdir, "pairs_eval.jsonl"))
    arrays, _ = rm_data.encode_pairs(pairs, tok, max_length=128)
    close = tuple(tok.encode("</think>"))
    scores = {}
    for side in ("chosen", "rejected"):
        tokens = jnp.asarray(arrays[f"{side}_tokens"])
        mask = jnp.asarray(arrays[f"{side}_mask"])
        resp = jnp.asarray(arrays[f"{side}_response"])
        regions = region_mask(tokens, mask, resp, region="summary", think_close=close)
        scores[side] = _score(model, tokens, mask, regions)
    assert float(pair_accuracy(scores["chosen"], scores["rejected"])) == pytest.approx(
        report["accuracy"]
    )


@pytest.mark.slow
def test_microbatched_step_matches_one_batch():
    import optax

    from r1.rm.step import rm_step_fn
    from r1.train.state import init_train_state

    model = _tiny_rm(seed=4)
    optimizer = optax.sgd(0.1)
    graphdef, state = init_train_state(model, optimizer, 0, with_reference=False)
    rng = np.random.default_rng(5)
    pairs, length = 4, 12
    batch = {"margin": jnp.asarray(rng.uniform(0, 1, pairs), jnp.float32)}
    for side in ("chosen", "rejected"):
        tokens = rng.integers(10, 100, size=(pairs, length)).astype(np.int32)
        tokens[:, 5:7] = CLOSE
        lengths = rng.integers(8, length + 1, size=pairs)
        mask = np.arange(length)[None, :] < lengths[:, None]
        batch[f"{side}_tokens"] = jnp.asarray(tokens)
        batch[f"{side}_mask"] = jnp.asarray(mask)
        batch[f"{side}_response"] = jnp.asarray(mask & (np.arange(length) >= 3)[None, :])
    settings = dict(region="summary", think_close=CLOSE, missing="empty")
    outs = [
        jax.jit(rm_step_fn(graphdef, optimizer, settings, True, 0.0, m))(state, batch)
        for m in (1, 2)
    ]
    (one, m1), (two, m2) = outs
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_train_rm_rejects_bad_settings(tmp_path):
    config = _tiny_config(steps=1)
    config.unlock()
    config.rm.region = "answer"
    config.lock()
    with pytest.raises(ValueError, match="config.rm.region"):
        train_rm(config, str(tmp_path))
    config = _tiny_config(steps=1, batch_size=4096)
    with pytest.raises(ValueError, match="config.train.batch_size"):
        train_rm(config, str(tmp_path))


def test_score_completions_matches_training_layout():
    """The GRPO-side entry (prompt and completion apart) equals scoring the joined row."""
    model = _tiny_rm(seed=2)
    prompt = jnp.asarray([[0, 0, 11, 12], [13, 14, 15, 16]], jnp.int32)
    pmask = prompt != 0
    completion = jnp.asarray([[20, 7, 8, 30, 2, 0], [21, 22, 7, 8, 31, 32]], jnp.int32)
    cmask = jnp.asarray([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
    got = jax.jit(
        lambda m, *a: score_completions(m, *a, region="summary", think_close=CLOSE, eos_id=2)
    )(model, prompt, pmask, completion, cmask)
    # Row 0: prompt 11 12, summary 30 (EOS left out); row 1: prompt, summary 31 32.
    ref_tokens = jnp.asarray([[11, 12, 30, 0, 0, 0], [13, 14, 15, 16, 31, 32]], jnp.int32)
    ref_mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    want = _score(model, ref_tokens, ref_mask, ref_mask)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _entry(workdir, steps):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train_rm",
            "--config=configs/reward_model.py:tiny",
            f"--workdir={workdir}",
            f"--config.train.steps={steps}",
            "--config.train.log_every=5",
            "--config.train.checkpoint_every=10",
            "--config.data.synthetic.num_train=256",
            "--config.data.synthetic.num_eval=64",
            "--config.eval.every=10",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_entry_point_runs_and_resumes(tmp_path):
    proc = _entry(tmp_path, 20)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval/accuracy:" in proc.stdout
    report = json.load(open(tmp_path / "rm_eval.json"))
    assert report["pairs"] == 64 and report["step"] == 20
    assert (tmp_path / "export" / rm_model.HEAD_FILE).is_file()
    # The same command with more steps continues from the checkpoint at step 20.
    proc = _entry(tmp_path, 25)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20, 25]
    assert json.load(open(tmp_path / "rm_eval.json"))["step"] == 25

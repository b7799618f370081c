"""Ahead-of-time compilation for TPU topologies (r1/aot/report.py, experiments/aot.py).

Needs the `tpu` extra (libtpu). The compile tests are slow on a loaded 2-core host (the TPU
compiler takes 1-4 minutes for the tiny GRPO step), so they are marked slow.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from r1 import aot, configlib, sharding
from r1.models.transformer import Transformer
from r1.rl import config as rl_config
from r1.train.config import make_optimizer
from r1.train.state import abstract_train_state, init_train_state, train_state_shardings

TINY = "configs/r1_zero.py:tiny"
REPO = str(configlib.REPO_ROOT)


def _libtpu():
    pytest.importorskip("libtpu", reason="needs the tpu extra: pip install -e .[tpu]")


def test_trainer_and_aot_share_mesh_and_state_shardings(devices):
    config = configlib.load_config(TINY)
    experiment = rl_config.parse(config)
    # The trainer's way: a real model, a real state.
    mesh = sharding.make_mesh(experiment.mesh)
    optimizer = make_optimizer(experiment.optimizer, experiment.train.steps)
    model = sharding.create_sharded_model(
        lambda: Transformer(experiment.model, rngs=nnx.Rngs(experiment.seed)), mesh
    )
    _, state = init_train_state(model, optimizer, experiment.seed, with_reference=True)
    real = train_state_shardings(state, optimizer, mesh)
    # The aot way: the same config, no weights.
    aot_mesh = aot.build_mesh(config, devices)
    assert aot_mesh.shape == mesh.shape
    assert [d.id for d in aot_mesh.devices.flat] == [d.id for d in mesh.devices.flat]
    _, abstract = abstract_train_state(
        lambda: Transformer(experiment.model, rngs=nnx.Rngs(experiment.seed)),
        optimizer,
        experiment.seed,
        with_reference=True,
    )
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == shapes
    planned = train_state_shardings(abstract, optimizer, aot_mesh)
    real_specs = jax.tree.leaves(jax.tree.map(lambda s: s.spec, real))
    planned_specs = jax.tree.leaves(jax.tree.map(lambda s: s.spec, planned))
    assert real_specs == planned_specs
    assert any(spec != jax.sharding.PartitionSpec() for spec in planned_specs)  # fsdp is used


def test_program_with_slots_holds_a_slot_cache_and_counts_its_decode_steps(devices):
    """rl.slots: the KV cache is slots x (bucket + new tokens) plus the prompts' prefill cache,
    and the worst case (every row full length) takes ceil(rows / slots) x new tokens steps."""
    config = configlib.load_config(TINY)
    mesh = aot.build_mesh(config, devices)
    static = aot.grpo_program(config, mesh)
    config.rl.slots = static.rows // 4
    slotted = aot.grpo_program(config, mesh)
    assert (static.decode_rows, slotted.decode_rows) == (static.rows, static.rows // 4)
    length = static.prompt_len + static.new_tokens
    per_row = aot.kv_cache_bytes(static) * mesh.size // (static.rows * length)
    expected = (static.rows // 4 * length + slotted.prompts * static.prompt_len) * per_row
    assert aot.kv_cache_bytes(slotted) * mesh.size == expected
    assert aot.worst_case_decode_steps(static) == static.new_tokens
    assert aot.worst_case_decode_steps(slotted) == 4 * static.new_tokens


def test_parse_buffer_assignment_names_largest_first():
    text = "\n".join(
        [
            "allocation 0: size 1024, parameter 0, shape |f32[16,16]| at ShapeIndex {}:",
            " value: <3 param.1 @0> (size=1024,offset=0): f32[16,16]{1,0}",
            "allocation 1: size 8388608, preallocated-temp:",
            " value: <7 fusion.2 @0> (size=4194304,offset=0): f32[1024,1024]{1,0}",
            " value: <8 dot.5 @0> (size=8388608,offset=0): bf16[2048,2048]{1,0}",
            "allocation 2: size 512, output shape is |f32[]|, maybe-live-out:",
            " value: <9 add.3 @0> (size=512,offset=0): f32[]",
        ]
    )
    hlo = '  %dot.5 = bf16[2048,2048]{1,0} dot(...), metadata={op_name="jit(step)/attn/scores"}'
    found = aot.parse_buffer_assignment(text, hlo, limit=2)
    assert [b.bytes for b in found] == [8388608, 1024]
    assert found[0].shape == "bf16[2048,2048]" and found[0].kind == "preallocated-temp"
    assert "jit(step)/attn/scores" in found[0].op
    assert found[1].kind == "parameter"


def test_pod_mesh_config_puts_slices_on_data():
    mesh = sharding.MeshConfig(data=1, fsdp=-1, expert=4)
    assert aot.pod_mesh_config(mesh, 2).data == 2
    assert aot.pod_mesh_config(mesh, 1) == mesh
    with pytest.raises(ValueError, match="multiple of --slices"):
        aot.pod_mesh_config(sharding.MeshConfig(data=3), 2)


def test_topology_names_are_checked():
    with pytest.raises(ValueError, match="v5p:8x8x16"):
        aot.topology_devices("h100:8")


def test_multi_slice_mesh_crosses_slices_on_data_only():
    _libtpu()
    devices = aot.topology_devices("v5e:2x2", num_slices=2)
    assert len(devices) == 8
    config = configlib.load_config(TINY)
    mesh = aot.build_mesh(config, devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "expert": 1, "tensor": 1}
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slice_of[0] == 0).all() and (slice_of[1] == 1).all()


def _expected_param_bytes(report_state_params, fsdp: int) -> int:
    """Independent of the rules table: with tensor = expert = 1, DEFAULT_RULES shard only
    `embed` and the MLA latent axes `q_lora` / `kv_lora` (over fsdp, at most once per
    parameter), so a parameter with such an axis divisible by fsdp is split fsdp ways and every
    other one is replicated."""
    total = 0
    for leaf in jax.tree.leaves(report_state_params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        axes = leaf.get_metadata().get("axes") or ()
        value = leaf.get_value()
        nbytes = math.prod(value.shape) * np.dtype(value.dtype).itemsize
        split = [
            a in ("embed", "q_lora", "kv_lora") and value.shape[i] % fsdp == 0
            for i, a in enumerate(axes)
        ]
        total += nbytes // fsdp if any(split) else nbytes
    return total


@pytest.mark.slow
@pytest.mark.parametrize("topology,devices_expected", [("v5e:2x2", 4), ("v4:2x2x2", 16)])
def test_tiny_grpo_step_compiles_with_rule_sharded_params(topology, devices_expected, tmp_path):
    """The tiny GRPO step compiled for a TPU topology, its parameters rule-sharded. On v5e:2x2
    the rollout and the update are compiled alone as well (the cost split); on v4:2x2x2 the step
    has a judge inside, whose per-chip bytes (rule-sharded like the policy) the report lists in
    its own line and in the JSON summary."""
    _libtpu()
    config = configlib.load_config(TINY)
    # One prompt width and 32 rows: the TPU compile takes longer with each width (a branch of
    # the step) and with more rows. Loop counts over width branches: tests/aot/test_loops.py;
    # the DeepSeek-V3 pod step below compiles several widths.
    config.data.buckets, config.rl.prompts_per_step = (48,), 4
    counted = topology == "v5e:2x2"
    if not counted:
        _save_random_judge(tmp_path)
        config.model_rewards = (("judge", 1.0, {"path": str(tmp_path)}),)
    report = aot.run(config, TINY, topology, loop_costs=counted)
    assert report.devices == devices_expected
    assert report.fits and report.per_chip_bytes < report.hbm_bytes
    fsdp = report.mesh["fsdp"]
    assert fsdp == devices_expected
    experiment = rl_config.parse(config)
    _, state = abstract_train_state(
        lambda: Transformer(experiment.model, rngs=nnx.Rngs(0)), optax.sgd(0.1), 0, False
    )
    expected = _expected_param_bytes(state.params, fsdp)
    assert report.total_param_bytes == _expected_param_bytes(state.params, 1)
    assert abs(report.params - expected) <= 0.02 * expected, (report.params, expected)
    assert report.params < report.total_param_bytes / 2  # really sharded
    assert report.flops > 0 and report.estimated_seconds > 0
    assert report.temporaries > 0 and report.kv_cache > 0
    assert report.flops > report.compiled_flops  # the decode loop, counted
    assert report.decode_steps == -(-report.rows // report.decode_rows) * report.new_tokens
    if counted:
        assert report.rollout_flops > 0 and report.update_flops > 0
        assert report.rollout_flops + report.update_flops == pytest.approx(report.flops)
        assert report.estimated_seconds == pytest.approx(
            report.rollout_seconds + report.update_seconds
        )
        assert 0 < report.update_estimated_mfu <= 1
        # HBM bytes: the tiny model and its cache fit in VMEM, so a decode step reads less
        # from HBM than the ideal (which reads everything from HBM), but not nothing.
        assert report.rollout_bytes_per_token > 0 and report.rollout_ideal_bytes_per_token > 0
        summary = report.summary()
        for field in ("rollout_bytes_per_token", "rollout_ideal_bytes_per_token"):
            assert summary[field] == getattr(report, field)
        assert summary["update_flops"] > 0 and 0 < summary["update_estimated_mfu"] <= 1
    else:
        judge = report.frozen_by_name["judge"]
        assert 0 < judge == report.frozen_params < report.params
        assert "frozen model judge" in report.text()
        assert report.summary()["frozen_by_name"] == {"judge": judge}


@pytest.mark.slow
def test_entry_point_fails_with_largest_buffers_when_it_does_not_fit(tmp_path):
    _libtpu()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [
        sys.executable,
        "-m",
        "experiments.aot",
        f"--config={TINY}",
        "--topology=v5e:2x2",
        # The tiny model with a 64k-token rollout of 8192 rows: the KV cache and the
        # activations cannot fit 4 x 16 GiB.
        "--config.rl.prompts_per_step=1024",
        "--config.rl.max_new_tokens=8192",
        "--config.model.max_position_embeddings=16384",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "DOES NOT FIT" in out.stdout
    assert "largest buffers on one device" in out.stdout
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["fits"] is False and summary["per_chip_bytes"] > summary["hbm_bytes"]
    assert summary["largest"] and summary["largest"][0]["bytes"] > 0
    assert summary["advice"]


def _save_random_judge(directory) -> int:
    """A random tiny judge saved where `Judge.load` reads it; returns its parameter bytes."""
    from r1 import judge as J
    from r1.judge import data as JD

    config = J.JudgeConfig()
    tokenizer = JD.judge_tokenizer(config)
    cfg = JD.judge_model_config(tokenizer.vocab_size, JD.TrainJudgeConfig(num_layers=1))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    JD.save_judge(JD.TrainedJudge(model, tokenizer, config, 0.0, 0.0, 0, 0.0), str(directory))
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_aot_program_takes_the_judge_as_a_frozen_input(devices, tmp_path):
    """A GRPO config with a judge reward: the AOT program has the judge's weights as a third,
    sharded argument (built from its config only) and its reference-answer fields in the batch;
    the step lowers to one program."""
    judge_bytes = _save_random_judge(tmp_path)
    config = configlib.load_config(TINY)
    config.model_rewards = (("judge", 1.0, {"path": str(tmp_path)}),)
    mesh = aot.build_mesh(config, devices)
    program = aot.grpo_program(config, mesh)
    assert set(program.frozen) == {"judge"} and len(program.args()) == 3
    assert {"judge_reference_tokens", "judge_reference_mask"} <= set(program.batch)
    leaves = jax.tree.leaves(program.frozen["judge"])
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # no weights were read
    assert aot.global_bytes(program.frozen["judge"]) >= judge_bytes
    assert aot.shard_bytes(program.frozen["judge"]) < aot.global_bytes(program.frozen["judge"])
    with sharding.use_mesh(mesh):
        text = program.step.lower(*program.args()).as_text()
    assert text.count("func.func public @main") == 1


@pytest.mark.slow
def test_deepseek_v3_r1_zero_step_fits_a_v5p_pod():
    """The paper's R1-Zero step (671B MLA + MoE, all 61 layers + MTP, 64 prompts x 16
    completions of 32,768 tokens through 512 slots, two updates of 512 rows, beta 0.001, a
    reference copy) compiled for v5p:8x8x16: it
    fits with headroom. About 2.5 minutes on this host: scanned layers keep the program small
    (docs/pod_plan.md)."""
    _libtpu()
    name = "configs/r1_zero.py:deepseek_v3"
    config = configlib.load_config(name)
    assert aot.target_of(config) == ("v5p:8x8x16", 1)
    report = aot.run(config, name, "v5p:8x8x16", loop_costs=False)
    assert report.chips == 1024 and report.new_tokens == 32768 and report.rows == 1024
    assert report.decode_rows == config.rl.slots == 512  # continuous batching, a slot per chip
    # Routing replay: the recorded experts, int16 [2 rows (1,024 over fsdp x expert = 512),
    # 2048 + 32768 tokens, 58 MoE layers, 8].
    assert config.rl.routing_replay and report.routes == 2 * (2048 + 32768) * 58 * 8 * 2
    assert report.fits and report.per_chip_bytes < 0.8 * report.hbm_bytes, report.text()
    # All 61 layers' parameters are there, sharded (~685B float32 parameters incl. MTP).
    assert report.total_param_bytes > 2.6e12
    assert report.params < 1.1 * report.total_param_bytes / 1024 + 1.0 * 2**30


def test_step_of_names_each_configs_own_step():
    assert aot.step_of(configlib.load_config("configs/r1_zero.py:tiny")) == "grpo"
    assert aot.step_of(configlib.load_config("configs/sft.py:tiny")) == "sft"
    assert aot.step_of(configlib.load_config("configs/distill.py:tiny")) == "sft"
    assert aot.step_of(configlib.load_config("configs/reward_model.py:tiny")) == "rm"
    with pytest.raises(ValueError, match="cannot tell which step"):
        aot.step_of(configlib.load_config("configs/models.py:qwen2_tiny"))


def test_every_pod_variant_names_a_topology():
    """Each non-tiny variant of a config that trains a step names the pod it targets."""
    for path in ("r1_zero", "sft", "distill", "reward_model"):
        for variant in configlib.variants(f"configs/{path}.py"):
            if variant.startswith("tiny"):
                continue
            topology, slices = aot.target_of(configlib.load_config(f"configs/{path}.py:{variant}"))
            assert topology and slices >= 1, f"configs/{path}.py:{variant}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["configs/reward_model.py:tiny", "configs/sft.py:tiny"])
def test_rm_and_sft_steps_compile_for_a_topology(name):
    """The reward-model and SFT trainers' own steps compile for v5e:2x2 with the trainer's
    batch (pairs x max_length; packed rows x seq_len) and rule-sharded parameters."""
    _libtpu()
    config = configlib.load_config(name)
    report = aot.run(config, name, "v5e:2x2", loop_costs=False)
    assert report.step == aot.step_of(config) and report.fits
    if report.step == "rm":
        assert report.rows == 2 * int(config.train.batch_size)
    else:
        assert report.rows == int(config.sft.batch_size)
    assert 0 < report.params < report.total_param_bytes


def test_compute_platform_follows_the_ambient_mesh():
    """Code that picks a platform-specific form while tracing (the CPU upcast of the
    sampler's prefill attention) must see the target TPU, not this host, when compiling
    ahead of time."""
    assert sharding.compute_platform() == "cpu"
    mesh = sharding.make_mesh(devices=aot.topology_devices("v5e:2x2"))
    with sharding.use_mesh(mesh):
        assert sharding.compute_platform() == "tpu"
    with sharding.use_mesh(sharding.make_mesh()):
        assert sharding.compute_platform() == "cpu"

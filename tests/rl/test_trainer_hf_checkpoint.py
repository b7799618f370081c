"""A user's own checkpoint and tokenizer: tiny Qwen2 / DeepseekV3 checkpoints written by
transformers with a byte-level BPE `tokenizer.json` trained here. r1 tokenises as the
`tokenizers` library does, takes the architecture from the checkpoint's config.json, and the
file-driven R1-Zero config trains on a math + code mixture with its default per-domain rewards
(the command outside checks run)."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from r1 import configlib
from r1.data.tokenizers import load_tokenizer
from r1.rl import config as rl_config
from r1.train import build

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have? #### 7",
    "Compute $\\frac{1}{2} + \\sqrt{x^2}$ and put it in \\boxed{}.",
    "def add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\n",
    "<think> reasoning </think> <answer> 42 </answer>",
    "数学问题：三加四等于多少？答案是七。",
    "```python\nprint(sum(map(int, input().split())))\n```",
] * 20
SAMPLES = [
    "数学：二加二等于四。混合 text 和中文。",
    "Let $f(x) = \\int_0^1 x^2\\,dx$; then \\boxed{\\tfrac{1}{3}}.",
    "for i in range(10):\n    print(i ** 2)  # squares\n",
]


def _tokenizer(directory):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f)
    return tok


def _qwen2(directory, vocab):
    cfg = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(directory)


def _deepseek_v3(directory, vocab):
    cfg = transformers.DeepseekV3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    transformers.DeepseekV3ForCausalLM(cfg).save_pretrained(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, write in (("qwen2", _qwen2), ("deepseek_v3", _deepseek_v3)):
        directory = root / name
        directory.mkdir()
        tok = _tokenizer(str(directory))
        write(str(directory), tok.get_vocab_size())
        out[name] = str(directory)
    return out


def test_token_ids_equal_the_tokenizers_library_on_cjk_latex_and_code(checkpoints):
    directory = checkpoints["qwen2"]
    reference = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    ours = load_tokenizer(directory)
    for text in SAMPLES + CORPUS[:6]:
        ids = reference.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == text
    assert ours.eos_id == reference.token_to_id("<|endoftext|>")


@pytest.mark.parametrize("family", ["qwen2", "deepseek_v3"])
def test_the_architecture_comes_from_the_checkpoint_not_the_preset(checkpoints, family):
    config = ml_collections.ConfigDict(
        configlib.load_config("configs/r1_zero.py:qwen2_5_1_5b_gsm8k").to_dict()
    )
    config.init.hf_path = config.tokenizer.path = checkpoints[family]
    config.data.files = "unused.jsonl"
    exp = rl_config.parse(config)
    run = build.start_policy(exp, total_steps=1)
    assert run.model.family == family and run.model.hidden_size == 32
    assert run.model.num_layers == 2 and run.model.vocab_size == 3 + 397
    if family == "deepseek_v3":
        assert run.model.n_routed_experts == 4 and run.model.kv_lora_rank == 16


HUMANEVAL = {
    "prompt": 'def add(a, b):\n    """Sum."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "entry_point": "add",
}
MBPP = {"text": "Write double(x).", "test_list": ["assert double(2) == 4"]}
STDIO = {
    "question": "Read an integer and print it doubled.",
    "input_output": json.dumps({"inputs": ["2\n"], "outputs": ["4\n"]}),
}
GSM8K = {"question": "What is 3 plus 4?", "answer": "3+4=7\n#### 7"}


def _train(workdir, checkpoint, files, *extra):
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=configs/r1_zero.py:qwen2_5_1_5b_gsm8k",
        f"--config.init.hf_path={checkpoint}",
        f"--config.tokenizer.path={checkpoint}",
        f"--config.data.files={files}",
        "--config.rl.prompts_per_step=2",
        "--config.rl.num_minibatches=1",  # the variant's 6 need a multiple of 6 prompts
        "--config.rl.group_size=2",
        "--config.rl.max_new_tokens=8",
        "--config.rl.decode_segments=2",  # the variant's 16 need >= 16 new tokens
        "--config.train.steps=3",
        "--config.mesh.fsdp=1",
        "--config.mesh.tensor=1",  # one device
        "--config.model.attention_impl=xla",  # the variant's TPU kernel; this runs on CPU
        f"--workdir={workdir}",
        *extra,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_r1_zero_trains_on_a_math_and_code_mixture_with_per_domain_rewards(checkpoints, tmp_path):
    files = {}
    for name, row in (("gsm8k", GSM8K), ("humaneval", HUMANEVAL), ("mbpp", MBPP), ("stdio", STDIO)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("\n".join(json.dumps(row) for _ in range(4)) + "\n")
    math, code = files["gsm8k"], files["humaneval"]
    rows = _train(
        tmp_path / "run",
        checkpoints["qwen2"],
        ",".join(str(f) for f in files.values()),
        f"--config.data.layout={','.join(files)}",
        "--config.data.mixture=0.4,0.2,0.2,0.2",
        f"--config.eval.files={math},{code}",
        "--config.eval.layout=gsm8k,humaneval",
        "--config.eval.every=3",
        "--config.eval.num_samples=2",
        "--config.eval.max_problems=6",
        "--config.eval.max_new_tokens=8",
    )
    evals = [r for r in rows if "eval/pass@1" in r]
    rows = [r for r in rows if "reward/total" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # Held-out files every 3 steps (and at the start) on their first 6 rows (4 math, 2 code):
    # pass@1 / pass@k / cons@k overall, per domain and per difficulty.
    assert [r["step"] for r in evals] == [0, 3]
    for row in evals:
        for name in ("pass@1", "pass@2", "cons@2", "response_length/mean"):
            assert {f"eval/{name}", f"eval/{name}/domain/math", f"eval/{name}/domain/code"} <= set(
                row
            )
        assert 0.0 <= row["eval/pass@1"] <= row["eval/pass@2"] <= 1.0
        assert "eval/pass@1/domain/math/difficulty_1" in row
    for row in rows:
        code_rows, math_rows = row["rows/domain/code"], row["rows/domain/math"]
        assert code_rows + math_rows == 4  # 2 prompts x G=2, every row in one domain
        # A random 8-token completion has no code block: every code row, and only those,
        # fails the sandboxed `code` reward for it; math-verify runs on math rows only.
        assert row["reward_failures/code/no_code_block"] == code_rows
        math_failures = sum(v for k, v in row.items() if k.startswith("reward_failures/math/"))
        assert math_failures <= math_rows
        assert {"reward/code", "reward/math", "reward/code.format_strict"} <= set(row)
    assert sum(r["rows/domain/code"] for r in rows) > 0 < sum(r["rows/domain/math"] for r in rows)

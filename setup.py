"""Package metadata for r1 (tool settings for pytest and ruff live in pyproject.toml)."""

import pathlib

from setuptools import find_packages, setup

_README = pathlib.Path(__file__).parent / "README.md"

setup(
    name="r1",
    version="0.1.0",
    description="DeepSeek-R1 training (GRPO, R1-Zero, SFT, distillation) in JAX and Flax NNX.",
    long_description=_README.read_text(encoding="utf-8") if _README.exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["r1", "r1.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Flax NNX still moves between minor releases: keep both pins to a tested range.
        # jax 0.10.2 + flax 0.12.8 (CI) and jax 0.11.2 + flax 0.12.10 (GPU image) are tested;
        # flax <= 0.12.8 fails on jax >= 0.11, which `import r1` reports (r1.check_versions).
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "ml-collections>=1.0",
        "absl-py",
        "numpy",
        "safetensors",
        "tokenizers",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "math-verify>=0.9",
        # Chat templates of users' checkpoints (r1.data.templates.render_chat_template);
        # 3.1.6 closes the sandbox escapes that matter for untrusted Hub templates.
        "jinja2>=3.1.6",
    ],
    extras_require={
        "data": ["seqio>=0.0.20", "tensorflow-datasets>=4.9", "pyarrow>=14"],
        # Ahead-of-time compilation for TPU topologies on any host (experiments/aot.py); the
        # libtpu release that matches the pinned jax. The plain install never imports it.
        "tpu": ["libtpu==0.0.52"],
        # torch is only ever a test-time reference; 2.13.0 is the CPU build on these machines.
        "test": [
            "pytest",
            "pytest-xdist",
            "hypothesis",
            "torch==2.13.0",
            "transformers>=5.0",
            "ruff",
            "trl>=1.16,<2",
            "pyarrow>=14",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6",
        ],
    },
)

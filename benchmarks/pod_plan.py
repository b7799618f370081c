r"""Regenerates the pod-plan table in docs/pod_plan.md: every non-tiny config variant compiled
ahead of time for the TPU topology it names (`train.topology`, `train.slices`).

    pip install -e .[tpu]
    python -m benchmarks.pod_plan                        # all variants with a target topology
    python -m benchmarks.pod_plan --only=r1_zero.py:qwen2_5_1_5b_gsm8k
    python -m benchmarks.pod_plan --dry_run              # print the rows, leave the doc alone

Each variant is compiled in its own process (`python -m experiments.aot`), whose last output
line is the JSON summary; a variant that fails to compile gets a row saying why. Rows are
replaced between the `<!-- pod-plan:begin -->` / `<!-- pod-plan:end -->` markers.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags

from r1 import aot, configlib

_ONLY = flags.DEFINE_multi_string("only", [], "file.py:variant to run (default: all targets).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the table instead of writing the doc.")
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "Seconds allowed per variant.")

ROOT = configlib.REPO_ROOT
DOC = ROOT / "docs" / "pod_plan.md"
BEGIN, END = "<!-- pod-plan:begin -->", "<!-- pod-plan:end -->"
HEADER = (
    "| config | step | topology | chips | params GiB | opt GiB | ref GiB | KV GiB | temp GiB "
    "| peak GiB / HBM | fits | TFLOP/step | est. s/step (rollout + update) | update est. MFU "
    "| decode MB/token (x ideal) | compile s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def targets() -> list[tuple[str, str, int]]:
    """(path:variant, topology, slices) of every config variant that names a topology."""
    found = []
    for path in sorted((ROOT / "configs").glob("*.py")):
        rel = f"configs/{path.name}"
        try:
            names = configlib.variants(rel)
        except ValueError:
            continue
        for variant in names:
            config = configlib.load_config(f"{rel}:{variant}")
            train = config.get("train")
            if train is not None and train.get("topology"):
                found.append((f"{rel}:{variant}", str(train.topology), int(train.get("slices", 1))))
    return found


# Beyond each variant's own target: the same DeepSeek-V3 R1-Zero config on the smallest v5p
# slice it is meant to fit (512 chips: only the mesh's fsdp size changes) and on two slices
# (data parallel over DCN; twice the prompts, so that every chip still holds one row).
EXTRA = (
    ("configs/r1_zero.py:deepseek_v3", "v5p:8x8x8", 1, ()),
    ("configs/r1_zero.py:deepseek_v3", "v5p:8x8x16", 2, ("--config.rl.prompts_per_step=64",)),
)


def compile_one(
    name: str, topology: str, slices: int, step: str, overrides: tuple[str, ...] = ()
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "experiments.aot",
        f"--config={name}",
        f"--topology={topology}",
        f"--slices={slices}",
        f"--step={step}",
        *overrides,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    try:
        out = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=_TIMEOUT.value
        )
    except subprocess.TimeoutExpired:
        return {"config": name, "step": step, "topology": topology, "error": "compile timed out"}
    lines = out.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        summary = {"fits": False, "error": tail[:200]}
    summary["config"] = " ".join((name, *overrides))
    summary.setdefault("step", step)
    summary.setdefault("topology", topology)
    summary.setdefault("compile_seconds", time.perf_counter() - start)
    return summary


def row(s: dict) -> str:
    gib = lambda key: f"{s.get(key, 0) / 2**30:.1f}"  # noqa: E731
    topo = s["topology"] + (f" x{s['slices']}" if s.get("slices", 1) > 1 else "")
    if "per_chip_bytes" not in s:
        return (
            f"| {s['config']} | {s['step']} | {topo} | | | | | | | | no: {s.get('error', '')} "
            "| | | | | |"
        )
    seconds = f"{s['estimated_seconds']:,.1f}"
    decode = ""
    if s.get("rollout_bytes_per_token"):
        seconds += f" ({s['rollout_seconds']:,.1f} + {s['update_seconds']:,.1f})"
        ratio = s["rollout_bytes_per_token"] / s["rollout_ideal_bytes_per_token"]
        decode = f"{s['rollout_bytes_per_token'] / 1e6:,.1f} ({ratio:.2f}x)"
    return (
        f"| {s['config']} | {s['step']} | {topo} | {s['chips']} | {gib('params')} "
        f"| {gib('opt_state')} | {gib('ref_params')} | {gib('kv_cache')} | {gib('temporaries')} "
        f"| {gib('per_chip_bytes')} / {gib('hbm_bytes')} | {'yes' if s['fits'] else 'no'} "
        f"| {s['flops'] / 1e12:,.0f} | {seconds} | {100 * s.get('update_estimated_mfu', 0):.0f}% "
        f"| {decode} | {s['compile_seconds']:.0f} |"
    )


def _row_key(row_text: str) -> tuple[str, ...]:
    """A row's identity: its config, step and topology cells (a 2-slice run names its slices)."""
    return tuple(cell.strip() for cell in row_text.strip().strip("|").split("|")[:3])


def merge_rows(old: list[str], new: list[str]) -> list[str]:
    """The table's rows with each of `new` replacing the old row of the same config, step and
    topology in place (appended when there was none): `--only` reruns keep the other rows."""
    fresh = {_row_key(r): r for r in new}
    merged = [fresh.pop(_row_key(r), r) for r in old]
    return merged + [r for r in new if _row_key(r) in fresh]


def write_table(rows: list[str], replace_all: bool = True) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC} lacks the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    old_table, tail = rest.split(END, 1)
    if not replace_all:
        old = [line for line in old_table.strip().splitlines()[2:] if line.startswith("|")]
        rows = merge_rows(old, rows)
    table = "\n".join([HEADER, *rows])
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    wanted = targets()
    if _ONLY.value:
        keys = {f"configs/{o}" if not o.startswith("configs/") else o for o in _ONLY.value}
        wanted = [t for t in wanted if t[0] in keys]
        if not wanted:
            raise app.UsageError(f"--only={_ONLY.value}: no such variant with a train.topology")
    runs = [(name, topology, slices, ()) for name, topology, slices in wanted]
    if not _ONLY.value:
        runs += list(EXTRA)
    rows = []
    for name, topology, slices, overrides in runs:
        step = aot.step_of(configlib.load_config(name))
        summary = compile_one(name, topology, slices, step, overrides)
        rows.append(row(summary))
        print(rows[-1], flush=True)
    if not _DRY_RUN.value:
        write_table(rows, replace_all=not _ONLY.value)
        print(f"wrote {pathlib.Path(DOC).relative_to(ROOT)}")


if __name__ == "__main__":
    app.run(main)

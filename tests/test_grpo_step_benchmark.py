"""benchmarks/grpo_step.py's bookkeeping: a side measured in two rounds (the second in the
opposite order, against drift of the machine's speed) is summarised over both rounds."""

import importlib.util
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "grpo_step_benchmark", ROOT / "benchmarks" / "grpo_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(step_times, cpu_times, sampling_s, peak, rows=None):
    run = {
        "seconds_per_step": statistics.median(step_times[1:]),
        "cpu_seconds_per_step": statistics.median(cpu_times[1:]),
        "step_times": step_times,
        "cpu_times": cpu_times,
        "sampling_s": sampling_s,
        "generated_tokens_per_step": [16384] * len(step_times),
        "peak_mib": peak,
        "first_step_s": step_times[0],
        "rounds": [step_times],
    }
    if rows is not None:
        run["rows_per_step"] = [rows] * len(step_times)
    return run


def test_two_rounds_are_summarised_over_their_timed_steps_only():
    bench = _benchmark_module()
    first = _run([9.0, 2.0, 3.0, 4.0], [9.5, 4.0, 6.0, 8.0], 1.0, 100.0, rows=128)
    second = _run([30.0, 5.0, 6.0], [31.0, 10.0, 12.0], 2.0, 300.0, rows=128)
    merged = bench._merge_rounds(first, second)
    # each round's first step (compilation, warm-up) stays out of the medians
    assert merged["seconds_per_step"] == statistics.median([2.0, 3.0, 4.0, 5.0, 6.0]) == 4.0
    assert merged["cpu_seconds_per_step"] == 8.0
    assert merged["sampling_s"] == 1.5
    assert merged["peak_mib"] == 300.0
    assert merged["first_step_s"] == 9.0
    assert merged["rounds"] == [first["step_times"], second["step_times"]]
    assert len(merged["generated_tokens_per_step"]) == 7 == len(merged["rows_per_step"])
    assert bench._steps_timed(merged) == 5
    assert bench._round_times(merged) == "9.00, 2.00, 3.00, 4.00 | 30.00, 5.00, 6.00"
    # the first round's record is not changed in place
    assert first["rounds"] == [first["step_times"]] and first["seconds_per_step"] == 3.0

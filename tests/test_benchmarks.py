"""Smoke tests of the benchmarks: they run on tiny sizes and print the tables they promise.

No timing is asserted here (speed is measured by the benchmarks, not tested); what is
checked is the shape of the output, that the backends' results agree, and that the
memory method sees what it claims to see.
"""

import ctypes
import ctypes.util
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import attention as bench
from benchmarks._timing import PeakRSS, interleaved_medians, peak_rss_unsupported_reason
from numpyllm import attention


def markdown_tables(text):
    """{"## heading": (header cells, [row cells, ...])} for each markdown table under a heading."""
    tables, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and heading is not None:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if heading not in tables:
                tables[heading] = (cells, [])
            elif not set("".join(cells)) <= {"-"}:
                tables[heading][1].append(cells)
    return tables


def expected_backends():
    names = ["numpy"]
    if "cython" in attention.available_backends():
        names.append("cython")
    try:
        import torch  # noqa: F401
    except ImportError:
        return names
    return names + ["torch"]


def test_attention_benchmark_prints_a_row_per_problem_and_pass(capsys, tmp_path):
    json_path = tmp_path / "results.json"
    records = bench.main(["--quick", "--sizes", "32", "--repeats", "1", "--no-padded", "--json", str(json_path)])
    output = capsys.readouterr().out
    backends = expected_backends()

    tables = markdown_tables(output)
    headers, rows = next(table for heading, table in tables.items() if heading.startswith("Time"))
    assert headers[:4] == ["Nq", "Nk", "causal", "pass"]
    for name in backends:
        assert f"{name} ms" in headers and f"{name} GFLOP/s" in headers
    assert ("cython/torch" in headers) == ({"cython", "torch"} <= set(backends))
    assert ("numpy/cython" in headers) == ("cython" in backends)
    expected_rows = [["32", "32", mask, pass_name] for mask in ("no", "yes") for pass_name in ("forward", "backward")]
    assert [row[:4] for row in rows] == expected_rows
    for row in rows:
        assert len(row) == len(headers)
        times = [float(row[headers.index(f"{name} ms")]) for name in backends]
        assert all(t > 0 for t in times)
        assert float(row[headers.index("max rel diff")]) < 1e-4  # every backend computed the same thing

    memory_headers, memory_rows = next(table for heading, table in tables.items() if heading.startswith("Peak"))
    assert [row[:4] for row in memory_rows] == expected_rows
    for row in memory_rows:
        assert all(float(row[memory_headers.index(f"{name} MiB")]) >= 0 for name in backends)

    saved = json.loads(json_path.read_text())
    assert len(saved["records"]) == len(records) == len(backends) * len(expected_rows)
    assert "VmHWM" in saved["memory_method"] and "FLOPs" in saved["flop_convention"]


def test_padded_batch_is_timed_against_the_real_batch(capsys):
    records = bench.main(["--quick", "--sizes", "16", "--causal", "no", "--repeats", "1", "--heads", "1",
                          "--head-dim", "8"])
    backends = expected_backends()
    real = bench.QUICK_PADDED_REAL_LENGTH
    headers, rows = next(table for heading, table in markdown_tables(capsys.readouterr().out).items()
                         if heading.startswith("Padded batch"))
    assert [row[:4] for row in rows] == [
        [str(n_q), str(n_k), length, pass_name]
        for n_q, n_k, length in ((real, real, "—"), (real, 2 * real, str(real)), (2 * real, 2 * real, str(real)))
        for pass_name in ("forward", "backward")
    ]
    assert [row[headers.index(f"{backends[0]} × real")] for row in rows[:2]] == ["1", "1"]
    assert all(float(row[headers.index("max rel diff")]) < 1e-4 for row in rows)  # padding means the same to all
    padded = [r for r in records if r.get("key_length") == real]
    assert {r["backend"] for r in padded} == set(backends)
    assert all(r["gflops"] > 0 for r in padded)


def test_padded_problem_counts_only_real_keys():
    problem = bench.Problem(4, 2, 8, 16, 8, "float32", False, key_length=5)
    assert problem.visible_pairs() == 8 * 5
    assert problem.key_lengths().tolist() == [5, 5, 5, 5]


def test_decode_mode_times_one_query_forward_only(capsys):
    bench.main(["--quick", "--decode", "--sizes", "16", "40", "--repeats", "1", "--no-torch"])
    headers, rows = next(iter(markdown_tables(capsys.readouterr().out).values()))
    assert [row[:4] for row in rows] == [["1", "16", "yes", "forward"], ["1", "40", "yes", "forward"]]


def test_missing_kernel_is_reported_and_the_rest_still_runs(capsys, monkeypatch):
    monkeypatch.setattr(attention, "available_backends", lambda: ("numpy",))
    bench.main(["--quick", "--sizes", "16", "--causal", "no", "--repeats", "1", "--no-torch", "--no-padded"])
    output = capsys.readouterr().out
    assert "Cython kernel is not built" in output
    headers, rows = next(iter(markdown_tables(output).values()))
    assert "numpy ms" in headers and "cython ms" not in headers and len(rows) == 2


def test_thread_scaling_table_pairs_one_and_two_threads(capsys):
    bench.main(["--quick", "--thread-scaling", "--sizes", "16", "--causal", "yes", "--repeats", "1", "--no-torch",
                "--no-padded"])
    headers, rows = markdown_tables(capsys.readouterr().out)["Thread scaling"]
    assert headers[5:] == ["1 thread ms", "2 threads ms", "speed-up"]
    without_torch = [name for name in expected_backends() if name != "torch"]
    assert [row[3:5] for row in rows] == [[p, name] for p in ("forward", "backward") for name in without_torch]


@pytest.mark.skipif("cython" not in attention.available_backends(), reason="the Cython kernel is not built")
def test_memory_n_reports_the_kernel_forward_and_backward(capsys):
    records = bench.main(["--memory-n", "64", "--causal", "yes"])
    assert [(r["backend"], r["pass_name"], r["n_q"]) for r in records] == [
        ("cython", "forward", 64),
        ("cython", "backward", 64),
    ]
    assert "cython peak extra MiB" in capsys.readouterr().out


def test_bad_size_is_rejected_with_the_value(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_interleaved_rounds_call_each_runner_once_per_round_after_a_warm_up():
    calls = []

    def runner(name):
        def run():
            calls.append(name)
            return f"{name}{calls.count(name)}"  # which call of this runner produced the result

        return run

    timings = interleaved_medians({"a": runner("a"), "b": runner("b")}, rounds=3)
    assert calls == ["a", "b"] * 4  # the warm-up round, then three timed rounds, interleaved
    assert [len(t.samples) for t in timings.values()] == [3, 3]  # the warm-up is not a sample
    assert all(t.median == sorted(t.samples)[1] for t in timings.values())
    assert (timings["a"].first_result, timings["a"].last_result) == ("a1", "a4")
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        interleaved_medians({"a": runner("a")}, rounds=0)


@given(n_q=st.integers(1, 40), extra_keys=st.integers(0, 40), causal=st.booleans())
def test_visible_pairs_count_the_bottom_right_mask(n_q, extra_keys, causal):
    problem = bench.Problem(1, 1, n_q, n_q + extra_keys, 8, "float32", causal)
    mask = np.tri(n_q, n_q + extra_keys, k=extra_keys, dtype=bool) if causal else np.ones((n_q, n_q + extra_keys))
    assert problem.visible_pairs() == int(mask.sum())


@pytest.mark.skipif(peak_rss_unsupported_reason() is not None, reason="needs Linux's /proc/self/clear_refs")
def test_peak_rss_sees_c_malloc_and_resets_between_blocks():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 * 2**20

    def touch_and_free():
        pointer = libc.malloc(size)
        ctypes.memset(pointer, 1, size)  # raw C memory: invisible to tracemalloc
        libc.free(pointer)

    with PeakRSS() as peak:
        touch_and_free()
    assert peak.extra_bytes >= 0.9 * size
    with PeakRSS() as idle:
        pass  # the 64 MiB peak above must not carry over
    assert idle.extra_bytes < 4 * 2**20


def test_without_a_resettable_peak_memory_the_tables_say_so(capsys, monkeypatch):
    monkeypatch.setattr(bench, "peak_rss_unsupported_reason", lambda: "no /proc here")
    bench.main(["--quick", "--sizes", "16", "--causal", "no", "--repeats", "1", "--no-torch", "--no-padded"])
    output = capsys.readouterr().out
    assert "Memory is not measured here: no /proc here." in output
    headings = list(markdown_tables(output))
    assert len(headings) == 1 and headings[0].startswith("Time")  # no memory table


def test_plot_is_written_as_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    path = tmp_path / "attention.png"
    bench.main(["--quick", "--sizes", "16", "--causal", "no", "--repeats", "1", "--no-torch", "--no-padded",
                "--plot", str(path)])
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_model_benchmark_prints_the_floor_and_machine(capsys):
    from benchmarks import model as bench_model

    results = bench_model.main(["--quick", "--rounds", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "8",
                                "--vocab", "16", "--batch", "2", "--seq", "8"])
    output = capsys.readouterr().out
    assert "- CPU: " in output and "- BLAS: " in output
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines()
             if line.startswith("| ")]
    headers, rows = table[0], table[2:]
    assert "% of floor (step)" in headers
    names = [row[0] for row in rows]
    floors = [bench_model.FLOOR]
    if bench_model.gemm_runs():
        floors.append(bench_model.BLAS_FLOOR)  # gemm.h runs the step: NumPy's BLAS beside it
    assert names[-len(floors):] == floors and rows[names.index(bench_model.FLOOR)][
        headers.index("% of floor (step)")] == "100%"
    assert "- numpyllm linear layers' float32 products: " in output
    assert all(results[name]["first_loss"] is None for name in floors)
    losses = {results[name]["first_loss"] for name in names[:-len(floors)]}  # every model row: same weights, batch
    assert max(losses) - min(losses) < 1e-4


def test_machine_lines_name_the_cpu_and_each_blas_kernel():
    from benchmarks._timing import blas_kernels, format_machine, machine_info

    np.ones((2, 2)) @ np.ones((2, 2))  # NumPy's BLAS is loaded
    info = machine_info()
    text = format_machine(info)
    assert text.startswith("- CPU: ") and info["cpu"] in text
    pools = [pool for pool in info["thread_pools"] if pool["user_api"] == "blas"]
    assert pools and all(any(pool["library"] in line and pool["internal_api"] in line for line in blas_kernels(pools))
                         for pool in pools)
    assert "- BLAS: " + "; ".join(blas_kernels(info["thread_pools"])) in text
    if "cython" in attention.available_backends():  # and which tile products the attention kernel runs
        assert f"float32 tiles: {attention.KERNEL.module.tile_products()} (" in text


def test_bert_benchmark_prints_both_rows_with_the_same_first_loss(capsys):
    from benchmarks import bert as bert_bench

    results = bert_bench.main(["--quick", "--rounds", "1", "--batch", "3", "--seq", "8", "--layers", "1",
                               "--hidden", "16", "--heads", "2", "--intermediate", "32", "--vocab", "50"])
    output = capsys.readouterr().out
    headers, rows = next(table for heading, table in markdown_tables("## x\n" + output).items())
    assert headers[:3] == ["implementation", "train step ms", "train tok/s"] and "inference tok/s" in headers
    assert "real (non-padding) tokens" in output
    names = [row[0] for row in rows]
    assert names[0] == "numpyllm"
    real = results["numpyllm"]["real_tokens"]
    assert 0 < real < 3 * 8  # some padding, counted out
    if "transformers + torch" in results:  # the same weights and batch give the same loss before any update
        assert results["numpyllm"]["first_loss"] == pytest.approx(results["transformers + torch"]["first_loss"],
                                                                  rel=1e-5)


@pytest.mark.parametrize("forced", [None, "Haswell"])
def test_openblas_note_says_whether_the_environment_chose_avx2(monkeypatch, forced):
    from benchmarks import model

    monkeypatch.setattr(model, "cpu_flags", lambda: {"avx2", "avx512f"})
    pools = [{"library": "numpy.libs/libscipy_openblas64_.so", "internal_api": "openblas", "architecture": "Haswell"}]
    if forced:
        monkeypatch.setenv("OPENBLAS_CORETYPE", forced)
    else:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    note = model.openblas_kernel_note(pools)
    assert note.startswith("NumPy's OpenBLAS uses its Haswell (AVX2) kernels on this AVX-512 CPU")
    assert ("because OPENBLAS_CORETYPE=Haswell is set" in note) == bool(forced)
    assert model.openblas_kernel_note([{**pools[0], "architecture": "SkylakeX"}]) is None
    assert model.openblas_kernel_note("threadpoolctl not installed") is None
    monkeypatch.setattr(model, "cpu_flags", lambda: {"avx2"})
    assert model.openblas_kernel_note(pools) is None

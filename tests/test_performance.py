"""The benchmarks' own checks, at a tiny size (fast; no real model needed).

``benchmarks/bench_scoring.py`` prints, for each layout, the largest
difference between the backend's scores and a naive full forward *of the same
layout*; here it runs on a tiny random Llama and the printed parity is read
back and asserted.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import TEXTS  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_scoring():
    return _load("bench_scoring")


def test_scoring_benchmark_scores_on_the_threads_it_reports(bench_scoring, tiny_llama_dir, monkeypatch, capsys):
    # The backend sets torch's threads for its own calls (default: every CPU);
    # --threads 1 must reach it, or the "1 thread" figures run on all cores.
    from skprompt.backends.huggingface import _base

    seen = []
    set_threads = _base._torch_threads

    def recording(n):
        seen.append(n)
        return set_threads(n)

    monkeypatch.setattr(_base, "_torch_threads", recording)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what a default backend would take
    bench_scoring.main(["--model", tiny_llama_dir, "--n-prompts", "2", "--repeats", "1", "--no-naive",
                        "--no-limit", "--no-dtypes", "--threads", "1"], texts=TEXTS)
    bench_scoring.main(["--model", tiny_llama_dir, "--sweep-batch-size", "2,4", "--sweep-prompts", "2",
                        "--repeats", "1", "--threads", "1"], texts=TEXTS)
    assert seen and set(seen) == {1}, seen


@pytest.mark.parametrize("n_tokens", [2, 5])  # shorter and longer than the tail
def test_scoring_benchmark_prints_parity_per_layout(bench_scoring, tiny_llama_dir, capsys, n_tokens):
    threads = torch.get_num_threads()
    results = bench_scoring.main(["--model", tiny_llama_dir, "--layouts", "tail,suffix", "--n-prompts", "3",
                                  "--n-tokens", str(n_tokens), "--repeats", "1", "--no-limit"], texts=TEXTS)
    assert torch.get_num_threads() == threads  # --threads is restored
    printed = capsys.readouterr().out
    found = dict(re.findall(r"parity \((\w+)\): max \|log-prob difference\| backend vs naive \1 forward: (\S+)",
                            printed))
    assert set(found) == {"tail", "suffix"}, printed
    for layout, value in found.items():
        assert float(value) < 1e-4, (layout, printed)
        assert float(value) == pytest.approx(results[layout]["max_abs_diff"], rel=1e-2)


def test_naive_references_differ_between_layouts(bench_scoring, tiny_llama_dir):
    # The parity is not vacuous: each layout's naive forward is a different
    # input, and the backend matches its own layout only.
    from skprompt.backends import CausalLMBackend

    kw = dict(template=bench_scoring.TEMPLATE, verbalizer=bench_scoring.VERBALIZER, cache_size=0)
    tail = CausalLMBackend(tiny_llama_dir, prompt_position="tail", **kw)
    suffix = CausalLMBackend(tiny_llama_dir, prompt_position="suffix", **kw)
    rng = np.random.default_rng(0)
    mean, std = tail.embedding_stats()
    prompts = (mean + std * rng.standard_normal((2, 2, tail.embedding_dim))).astype(np.float32)
    assert bench_scoring.parity(tail, prompts, TEXTS) < 1e-4
    assert bench_scoring.parity(suffix, prompts, TEXTS) < 1e-4
    ref_suffix = bench_scoring.naive_scores(suffix, prompts, TEXTS, bench_scoring.CLASSES, "suffix")
    assert np.abs(tail.score(prompts, TEXTS, bench_scoring.CLASSES) - ref_suffix).max() > 1e-3


def test_scoring_benchmark_reports_the_hardware_fractions(bench_scoring, tiny_llama_dir, capsys):
    bench_scoring.main(["--model", tiny_llama_dir, "--n-prompts", "2", "--repeats", "1", "--no-naive",
                        "--no-dtypes"], texts=TEXTS)
    printed = capsys.readouterr().out
    assert re.search(r"steady state: [\d.]+ GFLOP/s = \d+% of the same-shape GEMM rate, \d+% of the FLOP limit",
                     printed), printed
    assert re.search(r"first call: +[\d.]+ GFLOP/s = \d+% of the same-shape GEMM rate", printed), printed
    assert re.search(r"per round .*median: steady \d+%, first call \d+%", printed), printed
    assert "parity" not in printed
    assert "bfloat16" not in printed  # --no-dtypes


# ------------------------------------------------------------- fit cost
def test_fit_cost_least_squares_recovers_a_linear_cost(tiny_llama_dir):
    bench = _load("bench_fit_cost")
    pairs = np.array([100, 300, 200, 600, 400, 800])
    texts = np.array([10, 10, 20, 20, 40, 40])
    seconds = 2.0 + 0.012 * pairs + 0.029 * texts
    coef, r2, pred = bench.linear_fit(pairs, texts, seconds)
    np.testing.assert_allclose(coef, [2.0, 0.012, 0.029], rtol=1e-8)
    assert r2 == pytest.approx(1.0) and np.allclose(pred, seconds)


def test_fit_cost_benchmark_runs_at_a_tiny_size(tiny_llama_dir, capsys):
    from conftest import CAUSAL_TEMPLATE, VERBALIZER

    from skprompt.backends import CausalLMBackend

    bench = _load("bench_fit_cost")
    texts = [f"{t} (take {k})" for k in range(4) for t in TEXTS]
    labels = np.array(["fresh", "fresh", "rotten", "rotten"] * 4)
    made = []

    def make_backend():
        made.append(CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER))
        return made[-1]

    out = bench.main(["--texts", "8,16", "--iters", "1,2", "--popsize", "4"], make_backend=make_backend,
                     data=(texts, labels))
    rows = out["rows"]
    assert [(r["texts"], r["iters"]) for r in rows] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    assert len(made) == 5 and len({id(b) for b in made}) == 5  # warm-up + a fresh backend per fit
    # --threads (default 1) reaches every backend, whose own default is every CPU
    assert [b.get_params()["num_threads"] for b in made] == [1] * 5
    assert [r["num_threads"] for r in rows] == [1] * 4
    for r in rows:  # the pairs really scored by the model, at most the pairs asked for
        assert 0 < r["pairs"] <= r["queries"] and r["cpu"] > 0
    assert rows[1]["pairs"] > rows[0]["pairs"] and rows[3]["pairs"] > rows[2]["pairs"]
    printed = capsys.readouterr().out
    assert re.search(r"CPU s = -?[\d.]+ \+ -?[\d.]+ ms x pairs \+ -?[\d.]+ ms x texts \(R\^2 = ", printed), printed


# ------------------------------------------------------------- prediction
@pytest.mark.parametrize("mode", ["stream", "legacy"])
def test_predict_benchmark_measures_both_paths(tiny_llama_dir, mode):
    from conftest import CAUSAL_TEMPLATE, VERBALIZER

    from skprompt.backends import CausalLMBackend

    bench = _load("bench_predict")
    texts = [f"{t} (take {k})" for k in range(6) for t in TEXTS]
    labels = np.array(["fresh", "fresh", "rotten", "rotten"] * 6)

    def make_backend():
        return CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)

    r = bench.run_mode(mode, 12, 2, 0, torch.get_num_threads(), make_backend=make_backend, data=(texts, labels))
    assert CausalLMBackend.stream_texts is not None  # the legacy mode puts it back
    assert r["n_texts"] == 12 and r["n_prompts"] == 2 and r["proba_sum_ok"]
    assert r["cache_entries_fit"] == 8 and r["texts_per_s"] > 0 and r["fraction_of_limit"] > 0
    if mode == "stream":  # the fit's text cache is left as it was
        assert r["cache_entries_after"] == r["cache_entries_fit"] == r["fit_texts_kept"]
    else:  # the old path kept every predicted text
        assert r["cache_entries_after"] == r["cache_entries_fit"] + 12
    assert "peak +" in bench.report(r)


def test_scoring_benchmark_thread_sweep(bench_scoring, tiny_llama_dir, capsys):
    threads = torch.get_num_threads()
    bench_scoring.main(["--model", tiny_llama_dir, "--sweep-threads", "1,2", "--sweep-prompts", "3", "--repeats", "1"],
                       texts=TEXTS)
    printed = capsys.readouterr().out
    assert re.search(r"^\s+1 .*1\.00x$", printed, re.M) and re.search(r"^\s+2 .*x$", printed, re.M), printed
    assert torch.get_num_threads() == threads


def test_scoring_benchmark_reports_both_dtypes(bench_scoring, tiny_llama_dir, capsys):
    # Issue #12, item 3: float32 and bfloat16 side by side, whatever the CPU.
    results = bench_scoring.main(["--model", tiny_llama_dir, "--n-prompts", "3", "--repeats", "2", "--no-limit",
                                  "--no-naive"], texts=TEXTS)
    printed = capsys.readouterr().out
    rows = re.findall(r"^(float32|bfloat16)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", printed, flags=re.M)
    assert [r[0] for r in rows] == ["float32", "bfloat16"], printed
    assert float(rows[0][3]) == 1.0  # float32 against itself
    found = re.search(r"max \|log-prob difference\| (\S+); labels agree on ([\d.]+)% of (\d+) pairs", printed)
    assert found, printed
    d = results["dtypes"]
    assert float(found.group(1)) == pytest.approx(d["max_abs_diff"], rel=1e-2)
    assert 0 < d["max_abs_diff"] < 0.5  # bfloat16 really ran: close to float32, not equal
    assert int(found.group(3)) == 2 * 3 * len(TEXTS)
    assert float(found.group(2)) == pytest.approx(100 * d["agree"], abs=0.01)

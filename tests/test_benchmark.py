"""The reliability benchmark and the command line, on the real model at a tiny size."""

import json

import numpy as np
import pytest

from skprompt import cli
from skprompt.benchmark import SIZES, BenchConfig, fit_budget, run_benchmark
from skprompt.evaluation import mean_std_table, multiclass_brier, ood_metrics, prediction_metrics


def test_prediction_metrics_on_a_hand_case():
    classes = np.array(["a", "b"])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    y = np.array(["a", "a", "a", "b"])  # the second text is a mistake
    m = prediction_metrics(y, proba, classes)
    assert m["accuracy"] == 0.75
    np.testing.assert_allclose(m["log_loss"], -np.mean(np.log([0.9, 0.4, 0.7, 0.8])))
    np.testing.assert_allclose(m["brier"], np.mean([0.02, 0.72, 0.18, 0.08]))
    # the mistake has the highest entropy: perfect misclassification AUROC
    assert m["mis_auroc_entropy"] == 1.0
    np.testing.assert_allclose(multiclass_brier(np.array([0, 1]), np.eye(2)), 0.0)


def test_ood_metrics_rank_ood_texts_by_uncertainty():
    confident = np.array([[0.95, 0.05]] * 5)
    unsure = np.array([[0.55, 0.45]] * 5)
    m = ood_metrics(confident, unsure)
    assert m["ood_auroc_entropy"] == 1.0 and m["ood_auroc_maxprob"] == 1.0
    assert m["ood_rra_entropy"] < 0.5  # keeping the most confident keeps in-distribution texts first


def test_mean_std_table():
    rows = [{"m": "x", "acc": 0.5, "fit_queries": 10}, {"m": "x", "acc": 0.7, "fit_queries": 30}]
    table = mean_std_table(rows, ["m"], [("acc", "acc"), ("fit_queries", "q")])
    assert "| x | 0.600 ± 0.141 | 20 ± 14 |" in table


@pytest.mark.real_model
def test_benchmark_runs_resumes_and_writes_outputs(tmp_path):
    config = BenchConfig(tasks=("rotten_tomatoes",), methods=("zero-shot", "bbt"), seeds=(0,), k=4,
                         n_test=20, n_ood=10, budget=400,
                         estimator_params={"bbt": {"max_iter": 2, "popsize": 4, "intrinsic_dim": 8}})
    records = run_benchmark(config, tmp_path, progress=False, plots=True)
    assert [(r["task"], r["method"]) for r in records] == [("rotten_tomatoes", "zero-shot"),
                                                           ("rotten_tomatoes", "bbt")]
    bbt = records[1]
    assert 0 < bbt["fit_queries"] <= 400
    assert set(bbt["ood"]) == {"bbc_news", "tweets"}
    assert 0.0 <= bbt["accuracy"] <= 1.0 and 0.0 <= bbt["ece"] <= 1.0
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["config"]["budget"] == 400 and len(summary["runs"]) == 2
    assert "| rotten_tomatoes | bbt |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "reliability_rotten_tomatoes.png").stat().st_size > 0
    # resuming reads the saved runs instead of fitting again
    path = tmp_path / "runs" / "rotten_tomatoes__bbt__0.json"
    saved = json.loads(path.read_text())
    saved["accuracy"] = -1.0  # a marker only a re-read can return
    path.write_text(json.dumps(saved))
    again = run_benchmark(config, tmp_path, progress=False, plots=False)
    assert again[1]["accuracy"] == -1.0
    # a changed configuration is not served from the old results
    changed = BenchConfig(**{**config.__dict__, "budget": 300})
    assert changed.key() != config.key()


def test_budget_per_text_scales_with_the_fit_texts():
    assert fit_budget(BenchConfig(budget=500), 64) == 500
    per_text = BenchConfig(budget=500, budget_per_text=30)
    assert fit_budget(per_text, 32) == 960 and fit_budget(per_text, 80) == 2400
    assert per_text.key() != BenchConfig(budget=500).key()
    quick = BenchConfig(size="quick", **SIZES["quick"])
    assert fit_budget(quick, 80) == 30 * 80


def test_benchmark_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="methods: unknown"):
        run_benchmark(BenchConfig(methods=("nope",)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="tasks: unknown"):
        run_benchmark(BenchConfig(tasks=("imdb",)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="budget_per_text: expected a positive number"):
        run_benchmark(BenchConfig(budget_per_text=-3), tmp_path, progress=False)
    with pytest.raises(ValueError, match="budget: expected a positive int"):
        run_benchmark(BenchConfig(budget=0), tmp_path, progress=False)


@pytest.mark.real_model
def test_demo_command_prints_the_table(capsys):
    assert cli.main(["demo", "--n-test", "20", "--n-per-class", "4", "--methods", "zero-shot", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| method | accuracy | ECE | log loss | Brier | fit queries | wall time (s) |" in out
    assert "| zero-shot |" in out


def test_cli_rejects_bad_sizes(capsys):
    assert cli.main(["demo", "--n-test", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def _toy_backend(task):
    """A toy black box on the real texts: class scores from the prompt and word counts."""
    from skprompt.backends import FunctionBackend

    n = len(task.verbalizer)

    def fn(prompts, texts):
        feats = np.array([[len(t) % 7, t.count("e"), 1.0] for t in texts], dtype=float) / 10
        w = prompts[:, 0, : 3 * n].reshape(len(prompts), n, 3) if prompts.shape[1] else np.zeros((len(prompts), n, 3))
        return np.einsum("pcf,tf->ptc", w, feats)

    return FunctionBackend(fn, embedding_dim=3 * n)


def test_learning_curves_write_a_resumable_table_and_figure(tmp_path):
    from skprompt.benchmark import run_learning_curves

    kw = dict(tasks=("rotten_tomatoes",), methods=("bbt", "ensemble"), seeds=(0,), multipliers=(1, 2), k=4,
              n_test=20, backend_factory=_toy_backend, progress=False)
    records = run_learning_curves(tmp_path, **kw)
    assert len(records) == 4 and len(list((tmp_path / "runs").glob("*.json"))) == 4
    by = {(r["method"], r["multiplier"]): r for r in records}
    for method in ("bbt", "ensemble"):  # twice the generations spend about twice the queries
        assert 1.7 < by[(method, 2)]["fit_queries"] / by[(method, 1)]["fit_queries"] <= 2.0
    table = (tmp_path / "curves.md").read_text()
    assert "| rotten_tomatoes | ensemble | 2 | 1 |" in table  # task, method, multiplier, seeds
    assert (tmp_path / "curves_rotten_tomatoes.png").stat().st_size > 0
    # resuming reads the runs back instead of fitting again
    calls = []
    again = run_learning_curves(tmp_path, **{**kw, "backend_factory": lambda t: calls.append(t)})
    assert calls == [] and [r["accuracy"] for r in again] == [r["accuracy"] for r in records]
    # report only: what is there, nothing run for the missing seed
    partial = run_learning_curves(tmp_path, **{**kw, "seeds": (0, 1), "run_missing": False,
                                             "backend_factory": lambda t: calls.append(t)})
    assert calls == [] and len(partial) == 4
    assert "| rotten_tomatoes | bbt | 1 | 1 |" in (tmp_path / "curves.md").read_text()
    with pytest.raises(ValueError, match="multipliers"):
        run_learning_curves(tmp_path, **{**kw, "multipliers": (0,)})
    with pytest.raises(ValueError, match="cache"):
        run_learning_curves(tmp_path, **{**kw, "cache": True})
    with pytest.raises(ValueError, match="methods"):
        run_learning_curves(tmp_path, **{**kw, "methods": ("snpe",)})


def test_learning_curves_cache_replays_a_stopped_run(tmp_path, monkeypatch):
    # cache=True gives the default backend <out>/queries.sqlite: a run whose
    # file is missing (stopped before it was written) is fitted again from the
    # disk, asking the model nothing, and gives the same numbers.
    import skprompt.models
    from skprompt.benchmark import run_learning_curves
    from skprompt.datasets import load_task

    calls = []

    def toy_default(template, verbalizer, cache=None):
        toy = _toy_backend(load_task("rotten_tomatoes"))
        fn = toy.fn

        def counted(prompts, texts):
            calls.append(len(prompts) * len(texts))
            return fn(prompts, texts)

        counted.__qualname__ = "toy_curves"
        return type(toy)(counted, embedding_dim=toy.embedding_dim, cache=cache)

    monkeypatch.setattr(skprompt.models, "default_backend", toy_default)
    kw = dict(tasks=("rotten_tomatoes",), methods=("bbt",), seeds=(0,), multipliers=(1,), k=4, n_test=20,
              progress=False, plots=False, cache=True)
    first = run_learning_curves(tmp_path, **kw)
    assert sum(calls) > 0 and (tmp_path / "queries.sqlite").stat().st_size > 0
    (tmp_path / "runs" / "rotten_tomatoes__bbt__x1__0.json").unlink()
    calls.clear()
    again = run_learning_curves(tmp_path, **kw)
    assert sum(calls) == 0
    assert again[0]["accuracy"] == first[0]["accuracy"] and again[0]["log_loss"] == first[0]["log_loss"]

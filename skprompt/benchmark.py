"""The reliability benchmark: the paper's evaluation on the bundled real data.

``skprompt bench`` (and ``benchmarks/reliability.py``) fits every method on
k-shot splits of three tasks and measures accuracy, calibration and how well
the predictive uncertainty flags mistakes and out-of-distribution texts.

For each (task, seed): ``k`` examples per class for fitting plus a validation
split of the same size (the estimator holds it out itself,
``validation_fraction=0.5``), a disjoint stratified test set, and texts of
other tasks as out-of-distribution (OOD) inputs, scored with the
in-distribution task's template and label words, as the paper does. Every
(task, method, seed) result is written to its own JSON file as soon as it is
done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["BenchConfig", "SIZES", "OOD_SOURCES", "METHOD_NAMES", "CURVE_METHODS", "run_benchmark",
           "run_learning_curves", "make_estimator", "fit_budget"]

#: Texts of these tasks are the OOD inputs of each task.
OOD_SOURCES = {
    "rotten_tomatoes": ("bbc_news", "tweets"),
    "bbc_news": ("rotten_tomatoes",),
    "tweets": ("bbc_news",),
}

#: Methods compared, in table order. Every method runs at the estimator's
#: defaults, so the score-based ones have the default calibrated read-out
#: (``calibration="auto"``); "zero-shot-raw" is the untuned template without
#: it (``calibration=None``). "calibrated-bbt" is CalibratedClassifierCV
#: (sigmoid, cv=2) around "bbt": the classical recalibration baseline (each
#: of its two inner fits gets half the budget);
#: "gradient" is the white-box reference with full access to the model.
METHOD_NAMES = ("zero-shot-raw", "zero-shot", "bbt", "calibrated-bbt", "ensemble", "vi", "abc-smc", "snpe",
                "gradient")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What a benchmark run does. Every field is recorded in the results.

    ``budget`` caps the (prompt, text) pairs of one fit. ``budget_per_text``,
    when set, replaces it by ``round(budget_per_text * n_fit_texts)``: tasks
    with more classes have more fit texts (``2 k`` per class, train and
    validation), and one CMA-ES generation costs in proportion to them, so a
    per-text budget gives every task the same number of passes over its data.
    ``model`` names the bundled model (:func:`skprompt.models.default_backend`;
    ``None``: the default one).
    """

    tasks: tuple = ("rotten_tomatoes", "bbc_news", "tweets")
    methods: tuple = METHOD_NAMES
    seeds: tuple = (0, 1, 2)
    k: int = 16
    n_test: int = 200
    n_ood: int = 100
    budget: int | None = 4000
    budget_per_text: float | None = None
    n_bins: int = 10
    estimator_params: dict = dataclasses.field(default_factory=dict)
    size: str = "custom"
    model: str | None = None

    def key(self):
        """Hash of everything that changes a single run's result."""
        fields = dataclasses.asdict(self)
        for name in ("tasks", "methods", "seeds", "size"):
            fields.pop(name)
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: Preset sizes. "quick" fits 3 tasks x 8 methods x 3 seeds in under 20
#: minutes on 2 CPU cores: 8 fit and 8 validation texts per class, 30 queries
#: per fit text (960 for Rotten Tomatoes, 1,440 for tweets, 2,400 for BBC
#: News), CMA-ES populations of 4 so that the ensemble gets a few
#: generations. "standard" is 16 fit + 16 validation texts per class, 300 test
#: texts and every estimator at its defaults (no budget: each method spends
#: what its default generations or rounds cost). "full" is the paper's scale: 16 + 16 texts per class, the
#: estimators' defaults, 150 queries per fit text, 1,000 test texts.
SIZES = {
    "quick": dict(k=8, n_test=100, n_ood=50, budget=None, budget_per_text=30,
                  estimator_params={"bbt": {"popsize": 4}, "calibrated-bbt": {"popsize": 4},
                                    "ensemble": {"n_prompts": 4, "popsize": 4},
                                    "vi": {"n_prompts": 4, "popsize": 4},
                                    "abc-smc": {"n_prompts": 6}, "snpe": {"n_prompts": 6},
                                    "gradient": {"max_iter": 8}}),
    "standard": dict(k=16, n_test=300, n_ood=100, budget=None, budget_per_text=None, estimator_params={}),
    "full": dict(n_test=1000, n_ood=500, budget=None, budget_per_text=150, estimator_params={}),
}


def fit_budget(config, n_fit_texts):
    """The ``budget`` of one fit on ``n_fit_texts`` texts (see :class:`BenchConfig`)."""
    if config.budget_per_text is None:
        return config.budget
    return int(round(config.budget_per_text * n_fit_texts))


def make_estimator(method, backend, seed, budget, params=None):
    """The estimator benchmarked as ``method`` (a fresh, unfitted one)."""
    from .classifier import BlackBoxPromptClassifier

    params = dict(params or {})
    if method == "zero-shot-raw":
        return BlackBoxPromptClassifier(backend, method="zero-shot", calibration=None, random_state=seed,
                                        budget=budget, **params)
    if method == "gradient":
        from .whitebox import GradientPromptClassifier

        return GradientPromptClassifier(backend, random_state=seed, validation_fraction=0.5, **params)
    if method == "calibrated-bbt":
        from sklearn.calibration import CalibratedClassifierCV

        # cv=2 fits the inner estimator twice: each fit gets half the budget,
        # so that the whole method spends what every other method may.
        inner = BlackBoxPromptClassifier(backend, method="bbt", random_state=seed,
                                         budget=None if budget is None else budget // 2,
                                         validation_fraction=0.5, **params)
        return CalibratedClassifierCV(inner, method="sigmoid", cv=2)
    return BlackBoxPromptClassifier(backend, method=method, random_state=seed, budget=budget,
                                    validation_fraction=0.5, **params)


def _fit_queries(estimator):
    if hasattr(estimator, "n_queries_"):
        return int(estimator.n_queries_)
    if hasattr(estimator, "calibrated_classifiers_"):  # CalibratedClassifierCV: fits on each fold
        return int(sum(c.estimator.n_queries_ for c in estimator.calibrated_classifiers_))
    return None


def _atomic_write_json(path, payload):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1, default=_json_default)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are ordinary files
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _run_one(config, task, method, seed, backend, split, ood):
    from .evaluation import ood_metrics, prediction_metrics

    params = dict(config.estimator_params.get(method, {}))
    X_fit = list(split.X_train) + list(split.X_val)
    budget = fit_budget(config, len(X_fit))
    estimator = make_estimator(method, backend, seed, budget, params)
    y_fit = np.concatenate([split.y_train, split.y_val])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # budget warnings are expected at benchmark sizes
        estimator.fit(X_fit, y_fit)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    proba = estimator.predict_proba(split.X_test)
    ood_proba = {name: estimator.predict_proba(texts) for name, texts in ood.items()}
    predict_time = time.perf_counter() - start
    classes = estimator.classes_
    record = {
        "task": task, "method": method, "seed": seed, "config_key": config.key(),
        "params": params, "budget": budget, "fit_queries": _fit_queries(estimator),
        "fit_time_s": fit_time, "predict_time_s": predict_time,
        "classes": [str(c) for c in classes],
        "y_test": [str(v) for v in split.y_test],
        "proba_test": np.round(proba, 6),
    }
    record.update(prediction_metrics(split.y_test, proba, classes, n_bins=config.n_bins))
    per_source = {name: ood_metrics(proba, p, n_bins=config.n_bins) for name, p in ood_proba.items()}
    record["ood"] = per_source
    for metric in next(iter(per_source.values())):
        record[metric] = float(np.mean([m[metric] for m in per_source.values()]))
    if getattr(estimator, "vote_smoothing_", None) == "calibrated" and estimator.vote_error_rates_ is not None:
        # The same fit read out through the error channel (vote_smoothing="error"):
        # both read-outs are learnt in every label-only fit and the search does not
        # depend on them, so this is what that fit would give, at no query (the
        # test texts' answers are cached).
        other = copy.copy(estimator)
        other.vote_smoothing_ = "error"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alt = other.predict_proba(split.X_test)
        record["vote_smoothing_error"] = prediction_metrics(split.y_test, alt, classes, n_bins=config.n_bins)
    return record


TABLE_COLUMNS = [
    ("accuracy", "acc"), ("f1_macro", "macro-F1"), ("ece", "ECE"), ("log_loss", "NLL"), ("brier", "Brier"),
    ("mis_rra_entropy", "mis RRA (H)"), ("mis_auroc_entropy", "mis AUROC (H)"),
    ("ood_rra_entropy", "OOD RRA (H)"), ("ood_auroc_entropy", "OOD AUROC (H)"),
    ("ood_auroc_maxprob", "OOD AUROC (1-p)"),
    ("fit_queries", "fit queries"), ("fit_time_s", "fit s"),
]


def run_benchmark(config, out_dir, *, progress=True, plots=True, cache=False):
    """Run (or resume) a benchmark and write its outputs.

    Parameters
    ----------
    config : BenchConfig
    out_dir : str or Path
        Gets ``runs/`` (one JSON per task, method and seed), ``results.json``
        (configuration, environment and every number), ``results.md`` (the
        table, mean ± std over seeds) and ``reliability_<task>.png``.
    progress : bool
        tqdm progress bars.
    plots : bool
        Write the reliability diagrams (needs matplotlib).
    cache : bool
        Keep every answered query in ``out_dir/queries.sqlite`` (the
        backend's ``cache=``), so that a run killed in the middle of a fit
        replays what it had asked, and a re-run after a change that leaves the
        search unchanged (a new read-out, a new metric) asks the model nothing
        it asked before.

    Returns
    -------
    list of dict
        One record per (task, method, seed).
    """
    from tqdm.auto import tqdm

    from .datasets import few_shot_split, load_task, ood_texts
    from .evaluation import mean_std_table
    from .models import default_backend

    unknown = sorted(set(config.methods) - set(METHOD_NAMES))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {list(METHOD_NAMES)}.")
    bad_tasks = sorted(set(config.tasks) - set(OOD_SOURCES))
    if bad_tasks:
        raise ValueError(f"tasks: unknown {bad_tasks}; expected some of {list(OOD_SOURCES)}.")
    if config.budget is not None and not (isinstance(config.budget, int) and config.budget >= 1):
        raise ValueError(f"budget: expected a positive int or None; got {config.budget!r}.")
    per_text = config.budget_per_text
    if per_text is not None and not (isinstance(per_text, (int, float)) and np.isfinite(per_text) and per_text > 0):
        raise ValueError(f"budget_per_text: expected a positive number or None; got {per_text!r}.")
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    records = []
    jobs = [(t, s) for t in config.tasks for s in config.seeds]
    bar = tqdm(total=len(jobs) * len(config.methods), desc="bench", unit="run", disable=not progress)
    for task_name, seed in jobs:
        task = load_task(task_name)
        split = None
        for method in config.methods:
            path = out_dir / "runs" / f"{task_name}__{method}__{seed}.json"
            bar.set_postfix(task=task_name, method=method, seed=seed)
            if path.exists():
                cached = json.loads(path.read_text())
                if cached.get("config_key") == config.key():
                    records.append(cached)
                    bar.update(1)
                    continue
            if split is None:
                split = few_shot_split(task.texts, task.target, n_per_class=config.k,
                                       n_val_per_class=config.k, n_test=config.n_test, random_state=seed)
                ood = {src: ood_texts(src, config.n_ood, random_state=seed) for src in OOD_SOURCES[task_name]}
                backend = default_backend(template=task.template, verbalizer=task.verbalizer, model=config.model,
                                          cache=(out_dir / "queries.sqlite") if cache else None)
            record = _run_one(config, task_name, method, seed, backend, split, ood)
            _atomic_write_json(path, record)
            records.append(record)
            bar.update(1)
            if progress:
                tqdm.write(f"{task_name:>15} {method:>14} seed {seed}: acc {record['accuracy']:.3f} "
                           f"ECE {record['ece']:.3f} OOD-AUROC {record['ood_auroc_entropy']:.3f} "
                           f"({record['fit_queries']} queries, {record['fit_time_s']:.0f} s)")
    bar.close()

    order = {m: i for i, m in enumerate(config.methods)}
    records.sort(key=lambda r: (config.tasks.index(r["task"]), order[r["method"]], r["seed"]))
    table = mean_std_table(records, ["task", "method"], TABLE_COLUMNS)
    summary = {
        "config": dataclasses.asdict(config),
        "environment": {
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "cpus": os.cpu_count(),
        },
        "metrics": {c: h for c, h in TABLE_COLUMNS},
        "runs": [{k: v for k, v in r.items() if k not in ("proba_test", "y_test")} for r in records],
    }
    _atomic_write_json(out_dir / "results.json", summary)
    (out_dir / "results.md").write_text(table + "\n")
    if plots:
        _plot_reliability(records, config, out_dir)
    return records


def _plot_reliability(records, config, out_dir):
    """One reliability diagram per task, a curve per method, pooled over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import reliability_diagram

    for task in config.tasks:
        fig, ax = plt.subplots(figsize=(6, 6))
        for method in config.methods:
            runs = [r for r in records if r["task"] == task and r["method"] == method]
            if not runs:
                continue
            classes = np.asarray(runs[0]["classes"])
            y = np.concatenate([np.asarray(r["y_test"]) for r in runs])
            proba = np.vstack([np.asarray(r["proba_test"]) for r in runs])
            proba = proba / proba.sum(axis=1, keepdims=True)
            reliability_diagram(y, proba, labels=classes, n_bins=config.n_bins, ax=ax, name=method)
        ax.set_title(f"{task}: top-label reliability (pooled over seeds)")
        fig.tight_layout()
        fig.savefig(out_dir / f"reliability_{task}.png", dpi=100)
        plt.close(fig)



#: Methods of the learning curves: what the query budget buys.
CURVE_METHODS = ("bbt", "ensemble", "vi", "gradient")


def run_learning_curves(out_dir, *, tasks=("rotten_tomatoes", "bbc_news"), methods=CURVE_METHODS,
                        seeds=(0, 1, 2), multipliers=(1, 3, 10), k=16, n_test=300, backend_factory=None,
                        progress=True, plots=True, run_missing=True, cache=False):
    """Accuracy, ECE and NLL against the fit's query budget.

    Each method runs at its defaults with ``max_iter`` multiplied by each of
    ``multipliers`` (1 = the estimator's default, so ``10`` is ten times the
    default budget; the white-box reference gets the same multiple of its
    Adam steps), on ``k`` fit plus ``k`` validation texts per class and
    ``n_test`` test texts. Every run is written to its own JSON file as soon
    as it is done (an interrupted run resumes); then ``curves.md`` (mean ±
    std over seeds, the spent queries included) and ``curves_<task>.png``.

    Parameters
    ----------
    out_dir : str or Path
    tasks, methods, seeds, multipliers : sequences
    k, n_test : int
    backend_factory : callable or None
        ``backend_factory(task) -> PromptBackend``; default: the bundled model
        with the task's template and label words.
    progress, plots : bool
    run_missing : bool, default=True
        ``False``: run nothing; make the table and the figures from the runs
        already in ``out_dir`` (those of the same ``k`` and ``n_test``), e.g.
        when only part of a grid fitted in the time there was.
    cache : bool, default=False
        Keep every answered query in ``out_dir/queries.sqlite`` (the default
        backend's ``cache=``), so that a run stopped in the middle of a long
        fit (a 10x budget) replays what it had asked when resumed. Needs the
        default backend: a ``backend_factory`` sets its own ``cache=``.

    Returns
    -------
    list of dict
        One record per (task, method, multiplier, seed) found or run.
    """
    from tqdm.auto import tqdm

    from .datasets import few_shot_split, load_task
    from .evaluation import mean_std_table, prediction_metrics

    unknown = sorted(set(methods) - set(CURVE_METHODS))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {list(CURVE_METHODS)}.")
    bad_tasks = sorted(set(tasks) - set(OOD_SOURCES))
    if bad_tasks:
        raise ValueError(f"tasks: unknown {bad_tasks}; expected some of {list(OOD_SOURCES)}.")
    if not multipliers or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in multipliers):
        raise ValueError(f"multipliers: expected positive ints; got {multipliers!r}.")
    if cache and backend_factory is not None:
        raise ValueError("cache: only for the default backend; give backend_factory's backends their own cache=.")
    out_dir = Path(out_dir)
    if backend_factory is None:
        from .models import default_backend

        def backend_factory(task):
            return default_backend(template=task.template, verbalizer=task.verbalizer,
                                   cache=(out_dir / "queries.sqlite") if cache else None)

    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(json.dumps({"k": k, "n_test": n_test}).encode()).hexdigest()[:12]
    records = []
    jobs = [(t, s) for t in tasks for s in seeds]
    bar = tqdm(total=len(jobs) * len(methods) * len(multipliers), desc="curves", unit="run", disable=not progress)
    for task_name, seed in jobs:
        task = load_task(task_name)
        split = backend = None
        for method in methods:
            for mult in multipliers:
                path = out_dir / "runs" / f"{task_name}__{method}__x{mult}__{seed}.json"
                if path.exists() and json.loads(path.read_text()).get("config_key") == key:
                    records.append(json.loads(path.read_text()))
                    bar.update(1)
                    continue
                if not run_missing:
                    bar.update(1)
                    continue
                if split is None:
                    split = few_shot_split(task.texts, task.target, n_per_class=k, n_val_per_class=k,
                                           n_test=n_test, random_state=seed)
                    backend = backend_factory(task)
                estimator = make_estimator(method, backend, seed, None)
                estimator.set_params(max_iter=estimator.get_params()["max_iter"] * mult)
                X_fit = list(split.X_train) + list(split.X_val)
                y_fit = np.concatenate([split.y_train, split.y_val])
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    estimator.fit(X_fit, y_fit)
                fit_time = time.perf_counter() - start
                proba = estimator.predict_proba(split.X_test)
                record = {"task": task_name, "method": method, "multiplier": mult, "seed": seed,
                          "config_key": key, "fit_queries": _fit_queries(estimator), "fit_time_s": fit_time}
                record.update({m: v for m, v in prediction_metrics(split.y_test, proba, estimator.classes_).items()
                               if isinstance(v, (int, float))})
                _atomic_write_json(path, record)
                records.append(record)
                bar.update(1)
                if progress:
                    tqdm.write(f"{task_name:>15} {method:>9} x{mult:<3} seed {seed}: acc {record['accuracy']:.3f} "
                               f"ECE {record['ece']:.3f} NLL {record['log_loss']:.3f} "
                               f"({record['fit_queries']} queries, {fit_time:.0f} s)")
    bar.close()
    columns = [("accuracy", "acc"), ("ece", "ECE"), ("log_loss", "NLL"), ("fit_queries", "fit queries"),
               ("fit_time_s", "fit s")]
    records.sort(key=lambda r: (tasks.index(r["task"]), methods.index(r["method"]), r["multiplier"], r["seed"]))
    (out_dir / "curves.md").write_text(mean_std_table(records, ["task", "method", "multiplier"], columns,
                                                      count="seeds") + "\n")
    if plots:
        _plot_curves(records, tasks, methods, out_dir)
    return records


def _plot_curves(records, tasks, methods, out_dir):
    """One figure per task: accuracy, ECE and NLL against fit queries, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    for task in tasks:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for method in methods:
            runs = [r for r in records if r["task"] == task and r["method"] == method]
            mults = sorted({r["multiplier"] for r in runs})
            if not mults:
                continue
            for ax, metric in zip(axes, ("accuracy", "ece", "log_loss")):
                x = [np.mean([r["fit_queries"] or 0 for r in runs if r["multiplier"] == m]) for m in mults]
                ys = [[r[metric] for r in runs if r["multiplier"] == m] for m in mults]
                ax.errorbar(x, [np.mean(v) for v in ys], yerr=[np.std(v) for v in ys], marker="o",
                            capsize=3, label=method)
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
                ax.set_xlabel("fit queries ((prompt, text) pairs)")
                ax.set_ylabel({"accuracy": "accuracy", "ece": "ECE (10 bins)", "log_loss": "NLL"}[metric])
        axes[0].legend()
        fig.suptitle(f"{task}: what the query budget buys (mean ± std over seeds)")
        fig.tight_layout()
        fig.savefig(out_dir / f"curves_{task}.png", dpi=100)
        plt.close(fig)

"""Command line: ``skprompt demo``, ``skprompt bench`` and ``skprompt curves``.

Uses the public API only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]

DEMO_COLUMNS = [
    ("accuracy", "accuracy"),
    ("ece", "ECE"),
    ("log_loss", "log loss"),
    ("brier", "Brier"),
    ("queries", "fit queries"),
    ("time_s", "wall time (s)"),
]


def _demo(args):
    import numpy as np
    from tqdm.auto import tqdm

    from . import BlackBoxPromptClassifier
    from .datasets import few_shot_split, load_task
    from .evaluation import mean_std_table, prediction_metrics
    from .models import default_backend

    task = load_task("rotten_tomatoes")
    t0 = time.perf_counter()
    backend = default_backend(template=task.template, verbalizer=task.verbalizer)
    print(f"Model: SmolLM2-135M-Instruct ({backend!r}), ready in {time.perf_counter() - t0:.1f} s")
    print(f"Task: Rotten Tomatoes fresh/rotten, {args.n_per_class} examples per class for fit, "
          f"{args.n_test} held-out test texts; seeds {args.seeds}\n")
    rows = []
    runs = [(seed, method) for seed in args.seeds for method in args.methods]
    bar = tqdm(runs, desc="demo", unit="run", disable=args.quiet)
    for seed, method in bar:
        bar.set_postfix(seed=seed, method=method)
        split = few_shot_split(task.texts, task.target, n_per_class=args.n_per_class, n_test=args.n_test,
                               random_state=seed)
        clf = BlackBoxPromptClassifier(backend, method=method, random_state=seed, verbose=int(not args.quiet))
        start = time.perf_counter()
        clf.fit(split.X_train, split.y_train)
        proba = clf.predict_proba(split.X_test)
        elapsed = time.perf_counter() - start
        row = {"seed": seed, "method": method, "queries": clf.n_queries_, "time_s": elapsed}
        row.update(prediction_metrics(split.y_test, proba, clf.classes_))
        rows.append(row)
        if not args.quiet:
            tqdm.write(f"seed {seed} {method:>9}: accuracy {row['accuracy']:.3f}, ECE {row['ece']:.3f}, "
                       f"{row['queries']} queries, {elapsed:.1f} s")
    bar.close()
    print()
    print(mean_std_table(rows, ["method"], DEMO_COLUMNS))
    if len(args.seeds) > 1:
        print(f"\nmean ± std over seeds {args.seeds}")
    by_method = {m: np.mean([r["accuracy"] for r in rows if r["method"] == m]) for m in args.methods}
    if "zero-shot" in by_method and "ensemble" in by_method:
        gain = by_method["ensemble"] - by_method["zero-shot"]
        print(f"ensemble vs zero-shot accuracy: {gain:+.3f}")
    return 0


def _bench(args):
    import dataclasses

    from .benchmark import SIZES, BenchConfig, run_benchmark

    size = "quick" if args.quick else args.size
    fields = dict(SIZES[size])
    fields.update({k: v for k, v in (("tasks", args.tasks), ("methods", args.methods), ("seeds", args.seeds))
                   if v is not None})
    for key in ("tasks", "methods", "seeds"):
        if key in fields:
            fields[key] = tuple(fields[key])
    if args.budget is not None:
        fields["budget"] = args.budget if args.budget > 0 else None
        fields["budget_per_text"] = None
    if args.budget_per_text is not None:
        fields["budget_per_text"] = args.budget_per_text if args.budget_per_text > 0 else None
    if args.model is not None:
        fields["model"] = args.model
    config = BenchConfig(size=size, **fields)
    out = args.out or f"bench_results/{size}" + (f"_{args.model}" if args.model else "")
    print(f"skprompt bench ({size}): {len(config.tasks)} tasks x {len(config.methods)} methods x "
          f"{len(config.seeds)} seeds -> {out}")
    print("configuration: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()
                                         if k not in ("estimator_params",)))
    start = time.perf_counter()
    run_benchmark(config, out, progress=not args.quiet, plots=not args.no_plots, cache=args.cache)
    print((Path(out) / "results.md").read_text())
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; every number and the configuration are in "
          f"{out}/results.json")
    return 0


def _curves(args):
    from .benchmark import run_learning_curves

    out = args.out
    print(f"skprompt curves: {args.tasks} x {args.methods} x budgets {args.multipliers} x the default, "
          f"seeds {args.seeds} -> {out}")
    start = time.perf_counter()
    run_learning_curves(out, tasks=tuple(args.tasks), methods=tuple(args.methods), seeds=tuple(args.seeds),
                        multipliers=tuple(args.multipliers), k=args.n_per_class, n_test=args.n_test,
                        progress=not args.quiet, plots=not args.no_plots, run_missing=not args.report_only,
                        cache=args.cache)
    print((Path(out) / "curves.md").read_text())
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


def _parser():
    parser = argparse.ArgumentParser(prog="skprompt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="tune SmolLM2-135M on Rotten Tomatoes: zero-shot vs BBT vs ensemble")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="random seeds (default: 0)")
    demo.add_argument("--n-per-class", type=int, default=16, help="fit examples per class (default: 16)")
    demo.add_argument("--n-test", type=int, default=500, help="held-out test texts (default: 500)")
    demo.add_argument("--methods", nargs="+", default=["zero-shot", "bbt", "ensemble"],
                      help="methods to compare (default: zero-shot bbt ensemble)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    from .benchmark import METHOD_NAMES, OOD_SOURCES

    bench = sub.add_parser("bench", help="reliability benchmark: 3 tasks x all methods x seeds, tables and plots")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick size (about 15 minutes on 2 cores)")
    size.add_argument("--size", choices=["quick", "standard", "full"], default="full",
                      help="preset size (default: full)")
    bench.add_argument("--model", choices=["smollm2-135m-instruct", "gemma-3-270m"],
                       help="bundled model (default: smollm2-135m-instruct)")
    bench.add_argument("--tasks", nargs="+", choices=list(OOD_SOURCES), help="tasks (default: all three)")
    bench.add_argument("--methods", nargs="+", choices=list(METHOD_NAMES), help="methods (default: all)")
    bench.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 1 2)")
    bench.add_argument("--budget", type=int, help="queries per fit (0: unlimited); replaces the size's budget")
    bench.add_argument("--budget-per-text", type=float,
                       help="queries per fit text (default: the size's: 30 quick, 150 full)")
    bench.add_argument("--out", help="output folder (default: bench_results/<size>); an existing one resumes")
    bench.add_argument("--no-plots", action="store_true", help="skip the reliability diagrams")
    bench.add_argument("--cache", action="store_true",
                       help="keep every answered query in <out>/queries.sqlite: a killed run resumes inside a fit, "
                            "and a re-run that searches the same prompts asks the model nothing again")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=_bench)

    from .benchmark import CURVE_METHODS

    curves = sub.add_parser("curves", help="learning curves: accuracy, ECE and NLL against the query budget")
    curves.add_argument("--tasks", nargs="+", choices=list(OOD_SOURCES), default=["rotten_tomatoes", "bbc_news"])
    curves.add_argument("--methods", nargs="+", choices=list(CURVE_METHODS), default=list(CURVE_METHODS))
    curves.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    curves.add_argument("--multipliers", nargs="+", type=int, default=[1, 3, 10],
                        help="budgets as multiples of each method's default generations (default: 1 3 10)")
    curves.add_argument("--n-per-class", type=int, default=16, help="fit (and validation) texts per class")
    curves.add_argument("--n-test", type=int, default=300, help="test texts (default: 300)")
    curves.add_argument("--out", default="bench_results/curves", help="output folder; an existing one resumes")
    curves.add_argument("--no-plots", action="store_true", help="skip the figures")
    curves.add_argument("--cache", action="store_true",
                        help="keep every answered query in <out>/queries.sqlite: a run stopped inside a long fit "
                             "replays what it had asked when resumed")
    curves.add_argument("--quiet", action="store_true", help="no progress bars")
    curves.add_argument("--report-only", action="store_true",
                        help="run nothing: table and figures from the runs already in --out")
    curves.set_defaults(func=_curves)
    return parser


def main(argv=None):
    """Entry point of the ``skprompt`` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "n_per_class", 1) < 1 or getattr(args, "n_test", 1) < 1:
        print("skprompt: --n-per-class and --n-test must be positive", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

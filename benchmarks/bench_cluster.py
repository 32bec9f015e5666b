"""Throughput of a GridSearchCV on a local Dask cluster: 2 workers against 1 (issue #22).

One run, on one machine: the same ``GridSearchCV`` (``--candidates`` x
``--cv`` fits of ``bbt`` with the bundled SmolLM2, in-process backend, one
torch thread) run sequentially in this process, then on
``dask.distributed`` local clusters of one and of two worker processes under
``joblib.parallel_config(backend="dask")``. Reports each run's wall time and
mean fit time, the ratio, whether the results agree, and how many models
each worker holds after the search (1: the model was loaded once and reused
by every task of that worker). The workers are warmed (the model loaded)
before the clock starts; the first-load time is reported apart::

    python benchmarks/bench_cluster.py --out cluster.json

Needs ``pip install "skprompt[cluster]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def _loaded_models():
    from skprompt.backends.huggingface import _loading

    return len(_loading._LOADED)


def _warm(backend):
    backend.score(np.zeros((1, 0, backend.embedding_dim), np.float32), ["warm"], list(backend.verbalizer))
    return os.getpid()


def _search(clf, grid, cv, X, y, n_jobs=1):
    from sklearn.model_selection import GridSearchCV

    return GridSearchCV(clf, grid, cv=cv, n_jobs=n_jobs, refit=False).fit(X, y).cv_results_


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--cv", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker-env", nargs="*", default=[], help="NAME=VALUE set in the workers' environment")
    parser.add_argument("--keep-malloc-trim", action="store_true",
                        help="keep Dask's MALLOC_TRIM_THRESHOLD_=65536 in the workers (by default it is unset, as "
                             "docs/distributed.md advises: it makes every fit about a third slower)")
    args = parser.parse_args()
    worker_env = {"OMP_NUM_THREADS": "1", **dict(item.split("=", 1) for item in args.worker_env)}
    if not args.keep_malloc_trim:
        import dask

        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})

    from distributed import Client, LocalCluster
    from joblib import parallel_config
    from sklearn.model_selection import GridSearchCV

    from skprompt import BlackBoxPromptClassifier
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.models import default_backend

    task = load_task("rotten_tomatoes")
    split = few_shot_split(task.texts, task.target, n_per_class=args.n_per_class, n_test=10, random_state=0)
    backend = default_backend(template=task.template, verbalizer=task.verbalizer, num_threads=1)
    clf = BlackBoxPromptClassifier(backend, method="bbt", max_iter=args.max_iter, random_state=0)
    grid = {"sigma0": list(np.linspace(0.5, 1.5, args.candidates))}
    results = {"fits": args.candidates * args.cv, "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(),
               "workers_malloc_trim_threshold": "65536 (Dask's default)" if args.keep_malloc_trim else "unset"}
    scores = {}
    # Three runs of the same search: this process, sequential (n_jobs=1, one
    # torch thread); a one-worker cluster; a two-worker cluster.
    start = time.perf_counter()
    search = GridSearchCV(clf, grid, cv=args.cv, n_jobs=1, refit=False).fit(split.X_train, split.y_train)
    results["search_s_1"] = time.perf_counter() - start
    results["mean_fit_s_1"] = float(np.mean(search.cv_results_["mean_fit_time"]))
    scores[1] = search.cv_results_["mean_test_score"]
    print(f"local, sequential: {results['search_s_1']:.1f} s for {results['fits']} fits", flush=True)
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                          env=worker_env) as cluster, Client(cluster) as client:
            start = time.perf_counter()  # every worker loads the model before the search's clock starts
            workers = list(client.scheduler_info()["workers"])
            client.gather([client.submit(_warm, backend, pure=False, workers=[w]) for w in workers])
            results[f"load_s_{n}w"] = time.perf_counter() - start
            start = time.perf_counter()
            if n == 1:
                # joblib runs a search in the calling process when the cluster has one
                # thread in all, so the one-worker search is sent to the worker whole,
                # to run there task after task as that worker would.
                cv_results = client.submit(_search, clf, grid, args.cv, split.X_train, split.y_train,
                                           pure=False).result()
            else:
                with parallel_config(backend="dask"):
                    cv_results = _search(clf, grid, args.cv, split.X_train, split.y_train, n_jobs=-1)
            results[f"search_s_{n}w"] = time.perf_counter() - start
            results[f"mean_fit_s_{n}w"] = float(np.mean(cv_results["mean_fit_time"]))
            results[f"models_per_worker_{n}w"] = sorted(client.run(_loaded_models).values())
            results[f"cpus_per_worker_{n}w"] = sorted(client.run(lambda: len(os.sched_getaffinity(0))).values())
            scores[f"{n}w"] = cv_results["mean_test_score"]
        print(f"{n} worker(s): {results[f'search_s_{n}w']:.1f} s for {results['fits']} fits "
              f"(first load {results[f'load_s_{n}w']:.1f} s)", flush=True)
    results["speedup_2w_over_1w"] = results["search_s_1w"] / results["search_s_2w"]
    results["speedup_2w_over_process"] = results["search_s_1"] / results["search_s_2w"]
    results["same_scores"] = bool(all(np.array_equal(scores[1], v) for v in scores.values()))
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()

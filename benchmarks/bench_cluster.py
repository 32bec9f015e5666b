"""Throughput of a GridSearchCV on a local Dask cluster: 2 workers against 1 (issue #22).

One run, on one machine: the same ``GridSearchCV`` (``--candidates`` x
``--cv`` fits of ``bbt`` with the bundled SmolLM2, in-process backend, one
torch thread) run sequentially in this process, then on a
``dask.distributed`` local cluster of two worker processes under
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--cv", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

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
               "cpus": os.cpu_count()}
    scores = {}
    # One worker of one thread would not be a cluster run: joblib runs the tasks
    # in this process when the backend offers one thread. The baseline is
    # therefore this process, sequential (n_jobs=1), on one torch thread.
    start = time.perf_counter()
    search = GridSearchCV(clf, grid, cv=args.cv, n_jobs=1, refit=False).fit(split.X_train, split.y_train)
    results["search_s_1"] = time.perf_counter() - start
    results["mean_fit_s_1"] = float(np.mean(search.cv_results_["mean_fit_time"]))
    scores[1] = search.cv_results_["mean_test_score"]
    print(f"local, sequential: {results['search_s_1']:.1f} s for {results['fits']} fits", flush=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
        start = time.perf_counter()  # every worker loads the model before the search's clock starts
        workers = list(client.scheduler_info()["workers"])
        client.gather([client.submit(_warm, backend, pure=False, workers=[w]) for w in workers])
        results["load_s_2"] = time.perf_counter() - start
        start = time.perf_counter()
        with parallel_config(backend="dask"):
            search = GridSearchCV(clf, grid, cv=args.cv, n_jobs=-1, refit=False).fit(split.X_train, split.y_train)
        results["search_s_2"] = time.perf_counter() - start
        results["mean_fit_s_2"] = float(np.mean(search.cv_results_["mean_fit_time"]))
        results["models_per_worker_2"] = sorted(client.run(_loaded_models).values())
        scores[2] = search.cv_results_["mean_test_score"]
    print(f"2 workers: {results['search_s_2']:.1f} s for {results['fits']} fits "
          f"(first load {results['load_s_2']:.1f} s)", flush=True)
    results["speedup_2_over_1"] = results["search_s_1"] / results["search_s_2"]
    results["same_scores"] = bool(np.array_equal(scores[1], scores[2]))
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()

"""skprompt estimators tuned on a real local ``dask.distributed`` cluster.

scikit-learn goes past one machine through joblib: ``GridSearchCV`` and
``cross_val_score`` under ``joblib.parallel_config(backend="dask")`` send
their fits to the cluster's workers (here two worker processes on this
machine). Estimators and backends travel as recipes (pickles), so a worker
gets the same fit as the local process: same scores, same best parameters.
The persistent query cache (``cache=``) is one SQLite file that the workers
of one machine share: a search run again replays what the workers answered.
"""

import os

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from joblib import parallel_config  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402

from skprompt import BlackBoxPromptClassifier  # noqa: E402
from skprompt.backends import FunctionBackend  # noqa: E402

from toy_tasks import LinearToyModel, make_toy_task  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.filterwarnings("ignore:intrinsic_dim=")]

GRID = {"intrinsic_dim": [2, 4], "sigma0": [0.5, 1.0]}


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


class _Unreachable(LinearToyModel):
    """The toy model's answers may only come from the cache: calling it fails
    (the same class name, so the same cache identity)."""

    def __call__(self, prompts, texts):
        raise AssertionError("the model was asked although every answer is in the cache")


_Unreachable.__qualname__, _Unreachable.__module__ = LinearToyModel.__qualname__, LinearToyModel.__module__


class _PidRecording(LinearToyModel):
    """The toy model, writing the id of every process that calls it to ``path``."""

    path = None

    def __call__(self, prompts, texts):
        with open(self.path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return super().__call__(prompts, texts)


def _search(backend, X, y, n_jobs):
    clf = BlackBoxPromptClassifier(backend, method="bbt", max_iter=3, popsize=4, random_state=0)
    return GridSearchCV(clf, GRID, cv=3, n_jobs=n_jobs).fit(X, y)


def test_grid_search_on_the_cluster_equals_the_local_one(client, tmp_path):
    _, X, y, toy = make_toy_task(n_texts=36, seed=3)
    model = _PidRecording(toy.n_classes, toy.n_features)
    model.path = str(tmp_path / "pids")
    backend = FunctionBackend(model, embedding_dim=model.embedding_dim, cache_size=0)
    local = _search(backend, X, y, n_jobs=1)
    with parallel_config(backend="dask"):
        remote = _search(backend, X, y, n_jobs=-1)
    assert remote.best_params_ == local.best_params_
    np.testing.assert_array_equal(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(remote.predict_proba(X), local.predict_proba(X))
    # the search's fits were answered in both worker processes
    workers = set(client.run(os.getpid).values())
    callers = set(map(int, open(model.path).read().split()))
    assert len(workers) == 2 and workers <= callers


def test_cross_validation_on_the_cluster_equals_the_local_one(client):
    backend, X, y, _ = make_toy_task(n_texts=36, seed=4)
    clf = BlackBoxPromptClassifier(backend, method="bbt", max_iter=3, popsize=4, intrinsic_dim=3, random_state=0)
    local = cross_val_score(clf, X, y, cv=3, scoring="neg_log_loss")
    with parallel_config(backend="dask"):
        remote = cross_val_score(clf, X, y, cv=3, scoring="neg_log_loss", n_jobs=-1)
    np.testing.assert_array_equal(remote, local)


def test_the_workers_share_one_cache_file_and_a_rerun_replays_it(client, tmp_path):
    _, X, y, model = make_toy_task(n_texts=36, seed=5)
    path = tmp_path / "queries.sqlite"
    backend = FunctionBackend(model, embedding_dim=model.embedding_dim, cache=path)
    with parallel_config(backend="dask"):
        remote = _search(backend, X, y, n_jobs=-1)
    unreachable = _Unreachable(model.n_classes, model.n_features)
    unreachable.__dict__.update(model.__dict__)
    replay = _search(FunctionBackend(unreachable, embedding_dim=model.embedding_dim, cache=path), X, y, n_jobs=1)
    assert replay.best_params_ == remote.best_params_
    np.testing.assert_array_equal(replay.cv_results_["mean_test_score"], remote.cv_results_["mean_test_score"])


class _DiesOnce(LinearToyModel):
    """The toy model; the first worker process to call it after ``n`` calls dies
    (``os._exit``, as a killed worker), once per test (a marker file)."""

    marker, n = None, 5

    def __call__(self, prompts, texts):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen > self.n and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(prompts, texts)


def test_a_worker_killed_mid_search_fails_clearly_or_completes_and_a_rerun_replays(client, tmp_path):
    # Dask reruns a dead worker's tasks elsewhere, or (when the death races the
    # scheduler) the search fails with Dask's error: either is acceptable. What
    # must hold: a completed search gives the local result, and a rerun on the
    # same cache file asks the model only what the killed search did not answer.
    _, X, y, toy = make_toy_task(n_texts=36, seed=6)
    clean = _search(FunctionBackend(toy, embedding_dim=toy.embedding_dim), X, y, n_jobs=1)
    clean_pairs = sum(p * n for p, n in toy.calls)
    model = _DiesOnce(toy.n_classes, toy.n_features)
    model.marker = str(tmp_path / "died")
    # the toy model's name, so the toy model's cache identity (FunctionBackend keys answers by the function's name)
    model.__qualname__, model.__module__ = LinearToyModel.__qualname__, LinearToyModel.__module__
    path = tmp_path / "queries.sqlite"
    try:
        with parallel_config(backend="dask"):
            remote = _search(FunctionBackend(model, embedding_dim=model.embedding_dim, cache=path), X, y, n_jobs=-1)
    except (distributed.client.FutureCancelledError, distributed.KilledWorker):
        remote = None
    assert os.path.exists(model.marker)  # a worker did die mid-search
    if remote is not None:
        assert remote.best_params_ == clean.best_params_
        np.testing.assert_array_equal(remote.cv_results_["mean_test_score"], clean.cv_results_["mean_test_score"])
    fresh = LinearToyModel(toy.n_classes, toy.n_features)
    rerun = _search(FunctionBackend(fresh, embedding_dim=fresh.embedding_dim, cache=path), X, y, n_jobs=1)
    assert rerun.best_params_ == clean.best_params_
    np.testing.assert_array_equal(rerun.cv_results_["mean_test_score"], clean.cv_results_["mean_test_score"])
    assert sum(p * n for p, n in fresh.calls) < clean_pairs  # the killed search's answers were replayed


def test_workers_read_the_served_model_s_key_from_their_environment(tiny_llama_dir, monkeypatch):
    # The key is never pickled with a backend: each worker reads it from its own
    # environment (VLLM_API_KEY), here the cluster's, not the local process's.
    pytest.importorskip("httpx")
    from conftest import CAUSAL_TEMPLATE, VERBALIZER
    from fake_vllm import FakeVLLM

    from skprompt.backends import VLLMBackend

    key = "cluster-key-456"
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    server = FakeVLLM(tiny_llama_dir, api_key=key)
    texts = [f"{w} film, {v}." for w in ("A great", "A terrible", "A moving", "A boring", "A lovely", "A dull")
             for v in ("truly", "really")]
    y = np.array(["fresh", "rotten"] * 6)
    try:
        backend = VLLMBackend(server.url, tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
        clf = BlackBoxPromptClassifier(backend, method="bbt", max_iter=2, popsize=4, intrinsic_dim=2,
                                       random_state=0)
        grid = {"sigma0": [0.5, 1.0]}
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      env={"VLLM_API_KEY": key}) as cluster, distributed.Client(cluster):
            with parallel_config(backend="dask"):
                remote = GridSearchCV(clf, grid, cv=2, n_jobs=-1, refit=False).fit(texts, y)
        monkeypatch.setenv("VLLM_API_KEY", key)
        local = GridSearchCV(clf, grid, cv=2, n_jobs=1, refit=False).fit(texts, y)
    finally:
        server.close()
    assert not np.isnan(remote.cv_results_["mean_test_score"]).any()
    np.testing.assert_array_equal(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])

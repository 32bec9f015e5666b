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

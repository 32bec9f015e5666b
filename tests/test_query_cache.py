"""The persistent query cache (``cache=``) and retries of transient failures,
on toy black boxes: replay after an interrupt, sharing between processes,
retries that never change a result."""

import os
import pickle

import numpy as np
import pytest
from joblib import Parallel, delayed

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import BackendError, FunctionBackend, TransientBackendError
from skprompt.backends.store import QueryStore
from toy_tasks import LinearToyModel, make_toy_task


class Interrupting:
    """A query function that raises KeyboardInterrupt at its ``stop_at``-th call."""

    def __init__(self, model, stop_at):
        self.model, self.stop_at, self.n = model, stop_at, 0

    def __call__(self, prompts, texts):
        self.n += 1
        if self.n == self.stop_at:
            raise KeyboardInterrupt
        return self.model(prompts, texts)


class Flaky:
    """Fails with a retryable error on a fixed, seeded fraction of its calls."""

    def __init__(self, model, rate=0.3, seed=0, error=ConnectionError):
        self.model, self.rng, self.rate, self.error = model, np.random.default_rng(seed), rate, error
        self.failures = 0

    def __call__(self, prompts, texts):
        if self.rng.random() < self.rate:
            self.failures += 1
            raise self.error("injected failure")
        return self.model(prompts, texts)


def _fit(backend, texts, y, **params):
    # One prompt token of the toy's 6 values: intrinsic_dim at its default.
    clf = BlackBoxPromptClassifier(backend, method="bbt", random_state=0, n_prompt_tokens=9, **params)
    return clf.fit(texts, y)


def test_interrupted_fit_resumes_from_the_cache_file(tmp_path):
    # At the estimator's defaults (dimension, population, budget).
    _, texts, y, _ = make_toy_task(n_texts=40, seed=3)
    model = LinearToyModel()
    clean_backend = FunctionBackend(model, embedding_dim=model.embedding_dim)
    clean = _fit(clean_backend, texts, y)
    total = clean_backend.stats["pairs"]

    path = tmp_path / "queries.sqlite"
    first = FunctionBackend(Interrupting(LinearToyModel(), stop_at=25), embedding_dim=6, cache=path)
    first.fn.__qualname__ = "toy"  # the same identity as the resumed run's function
    with pytest.raises(KeyboardInterrupt):
        _fit(first, texts, y)
    answered = first.stats["pairs"]
    assert 0 < answered < total

    again = FunctionBackend(Interrupting(LinearToyModel(), stop_at=-1), embedding_dim=6, cache=path)
    again.fn.__qualname__ = "toy"
    resumed = _fit(again, texts, y)
    # Only the queries never answered were asked anew; the rest came from disk.
    assert again.stats["disk_pairs"] >= answered
    assert again.stats["pairs"] == total - answered
    assert resumed.n_queries_ == clean.n_queries_
    np.testing.assert_array_equal(resumed.prompt_embeddings_, clean.prompt_embeddings_)
    np.testing.assert_array_equal(resumed.predict_proba(texts), clean.predict_proba(texts))


def test_no_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backend, texts, y, _ = make_toy_task(n_texts=20)
    _fit(backend, texts, y, max_iter=3)
    assert os.listdir(tmp_path) == []


def test_cache_keys_separate_classes_prompts_and_identity(tmp_path):
    path = tmp_path / "c.sqlite"
    model = LinearToyModel()
    a = FunctionBackend(model, embedding_dim=6, cache=path, cache_size=0)
    prompts = np.random.default_rng(0).standard_normal((2, 1, 6)).astype(np.float32)
    s1 = a.score(prompts, ["x", "y"], ["a", "b"])
    assert a.stats["pairs"] == 4 and a.stats["disk_pairs"] == 0
    s2 = a.score(prompts, ["x", "y"], ["a", "b"])  # no memory cache: all from disk
    np.testing.assert_array_equal(s1, s2)
    assert a.stats["disk_pairs"] == 4 and a.stats["pairs"] == 4
    a.score(prompts, ["x", "y"], ["b", "a"])  # other classes: other answers
    a.score(prompts + 1, ["x", "y"], ["a", "b"])  # other prompts
    assert a.stats["pairs"] == 12
    labels = FunctionBackend(LinearToyModel(labels_only=True), embedding_dim=6, labels_only=True, cache=path)
    lab = labels.predict_labels(prompts, ["x", "y"], ["a", "b"])  # another identity: not the scores
    assert labels.stats["disk_pairs"] == 0
    np.testing.assert_array_equal(lab, s1.argmax(-1))
    twin = FunctionBackend(LinearToyModel(labels_only=True), embedding_dim=6, labels_only=True, cache=path)
    np.testing.assert_array_equal(twin.predict_labels(prompts, ["x", "y"], ["a", "b"]), lab)
    assert twin.stats["disk_pairs"] == 4 and twin.stats["pairs"] == 0


def _worker(path, seed):
    model = LinearToyModel()
    backend = FunctionBackend(model, embedding_dim=6, cache=path, cache_size=0)
    rng = np.random.default_rng(seed % 3)  # workers overlap: three distinct query streams
    texts = [f"t{i}" for i in range(30)]
    out = []
    for _ in range(20):
        prompts = rng.standard_normal((4, 1, 6)).astype(np.float32)
        out.append(backend.score(prompts, texts, ["a", "b"]))
    return np.stack(out), backend.stats


def test_processes_share_one_cache_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    results = Parallel(n_jobs=4, backend="loky")(delayed(_worker)(path, s) for s in range(8))
    for seed, (scores, _) in enumerate(results):
        np.testing.assert_array_equal(scores, results[seed % 3][0])
    assert len(QueryStore(path)) == 3 * 20 * 4 * 30
    scores, stats = _worker(path, 1)  # everything is on disk now
    assert stats["pairs"] == 0 and stats["disk_pairs"] == 20 * 4 * 30


def test_cache_is_picklable_and_refuses_bad_paths(tmp_path):
    backend = FunctionBackend(LinearToyModel(), embedding_dim=6, cache=tmp_path / "p.sqlite")
    backend.score(np.ones((1, 1, 6)), ["x"], ["a", "b"])
    restored = pickle.loads(pickle.dumps(backend))
    restored.score(np.ones((1, 1, 6)), ["x"], ["a", "b"])
    assert restored.stats["disk_pairs"] == 1 and restored.stats["pairs"] == 0
    with pytest.raises(ValueError, match="cache must be a file path"):
        FunctionBackend(LinearToyModel(), embedding_dim=6, cache=tmp_path)
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello, this is not a database" * 100)
    with pytest.raises(ValueError, match="not a skprompt query cache"):
        FunctionBackend(LinearToyModel(), embedding_dim=6, cache=not_db)


@pytest.mark.parametrize("error", [ConnectionError, TimeoutError, TransientBackendError])
def test_retries_never_change_the_result(error):
    _, texts, y, _ = make_toy_task(n_texts=30, seed=1)
    clean_backend = FunctionBackend(LinearToyModel(), embedding_dim=6)
    clean = _fit(clean_backend, texts, y, max_iter=20)
    flaky_fn = Flaky(LinearToyModel(), rate=0.3, error=error)
    flaky = FunctionBackend(flaky_fn, embedding_dim=6, max_retries=8, retry_backoff=0.0)
    result = _fit(flaky, texts, y, max_iter=20)
    assert flaky_fn.failures > 5
    assert flaky.stats["retries"] == flaky_fn.failures
    np.testing.assert_array_equal(result.predict_proba(texts), clean.predict_proba(texts))
    assert result.n_queries_ == clean.n_queries_
    assert flaky.stats["pairs"] == clean_backend.stats["pairs"]


def test_retries_give_up_with_a_clear_error_and_never_retry_other_errors():
    always = FunctionBackend(Flaky(LinearToyModel(), rate=1.0), embedding_dim=6, max_retries=2, retry_backoff=0.0)
    with pytest.raises(BackendError, match="failed after 3 attempt"):
        always.score(np.ones((1, 1, 6)), ["x"], ["a", "b"])
    assert always.stats["retries"] == 2

    calls = []

    def bad(prompts, texts):
        calls.append(1)
        raise ValueError("HTTP 400: bad request")

    backend = FunctionBackend(bad, embedding_dim=6, max_retries=5, retry_backoff=0.0)
    with pytest.raises(ValueError, match="HTTP 400"):
        backend.score(np.ones((1, 1, 6)), ["x"], ["a", "b"])
    assert len(calls) == 1
    with pytest.raises(ValueError, match="max_retries"):
        FunctionBackend(bad, embedding_dim=6, max_retries=-1)


def test_transformers_backend_replays_from_the_cache_file(tiny_llama_dir, tmp_path):
    from skprompt.backends import CausalLMBackend

    path = tmp_path / "hf.sqlite"
    kw = dict(template="Review: {text}\nSentiment:", verbalizer={"fresh": "positive", "rotten": "negative"})
    first = CausalLMBackend(tiny_llama_dir, cache=path, **kw)
    prompts = np.random.default_rng(0).standard_normal((3, 2, 32)).astype(np.float32)
    texts = ["Great.", "The plot is dull."]
    scores = first.score(prompts, texts, ["fresh", "rotten"])
    second = CausalLMBackend(tiny_llama_dir, cache=path, **kw)
    np.testing.assert_array_equal(second.score(prompts, texts, ["fresh", "rotten"]), scores)
    assert second.stats["disk_pairs"] == 6 and second.stats["pairs"] == 0
    other = CausalLMBackend(tiny_llama_dir, cache=path, prompt_position="suffix", **kw)  # another layout
    other.score(prompts, texts, ["fresh", "rotten"])
    assert other.stats["disk_pairs"] == 0 and other.stats["pairs"] == 6
    assert CausalLMBackend(tiny_llama_dir, cache=path, **kw).get_params()["cache"] == path


def _retrain_in_place(model_dir):
    """Other weights in the same directory (a model redeployed under its old name)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.5)
    model.save_pretrained(model_dir)


def test_other_weights_under_the_same_path_never_replay_old_answers(tiny_llama_dir, tmp_path):
    import shutil

    from skprompt.backends import CausalLMBackend
    from skprompt.backends.huggingface import clear_model_cache

    model_dir = str(shutil.copytree(tiny_llama_dir, tmp_path / "model"))
    path = tmp_path / "hf.sqlite"
    kw = dict(template="Review: {text}\nSentiment:", verbalizer={"fresh": "positive", "rotten": "negative"})
    prompts = np.random.default_rng(0).standard_normal((3, 2, 32)).astype(np.float32)
    texts = ["Great.", "The plot is dull."]
    old = CausalLMBackend(model_dir, cache=path, **kw).score(prompts, texts, ["fresh", "rotten"])
    _retrain_in_place(model_dir)
    clear_model_cache()  # as in a new process
    new = CausalLMBackend(model_dir, cache=path, **kw)
    scores = new.score(prompts, texts, ["fresh", "rotten"])
    assert new.stats["disk_pairs"] == 0 and new.stats["pairs"] == 6
    assert not np.allclose(scores, old)
    again = CausalLMBackend(model_dir, cache=path, **kw)  # the same new weights: replayed
    np.testing.assert_array_equal(again.score(prompts, texts, ["fresh", "rotten"]), scores)
    assert again.stats["disk_pairs"] == 6

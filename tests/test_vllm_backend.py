"""VLLMBackend against a fast stand-in of vLLM's server (tests/fake_vllm.py)
serving a tiny model: parity with CausalLMBackend, label-only answers, keys,
HTTP errors, retries through a fault-injecting proxy, resume after the server
died, concurrency. tests/test_vllm.py runs the same against a real vLLM."""

import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.base import clone

sys.path.insert(0, os.path.dirname(__file__))

from conftest import CAUSAL_TEMPLATE, TEXTS, VERBALIZER  # noqa: E402
from fake_vllm import FakeVLLM  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402

from skprompt import BlackBoxPromptClassifier  # noqa: E402
from skprompt.backends import BackendError, CausalLMBackend  # noqa: E402

httpx = pytest.importorskip("httpx")
from skprompt.backends.vllm import VLLMBackend  # noqa: E402

KEY = "test-key-123"
CLASSES = ["fresh", "rotten"]
FIT_TEXTS = [f"{w} film, {v}." for w in ("A great", "A terrible", "A moving", "A boring", "A lovely", "A dull",
                                         "A clever", "An awful") for v in ("truly", "really")]
FIT_Y = np.array(["fresh", "rotten"] * 8)


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    fake = FakeVLLM(tiny_llama_dir, api_key=KEY)
    yield fake
    fake.close()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", KEY)


def _backend(url, model_dir, **kw):
    kw.setdefault("template", CAUSAL_TEMPLATE)
    kw.setdefault("verbalizer", VERBALIZER)
    kw.setdefault("retry_backoff", 0.0)
    return VLLMBackend(url, model_dir, **kw)


def _prompts(backend, n=4, seed=0, n_tokens=None):
    rng = np.random.default_rng(seed)
    n_tokens = backend.default_prompt_length if n_tokens is None else n_tokens
    _, std = backend.embedding_stats()
    return rng.normal(0, std, (n, n_tokens, backend.embedding_dim)).astype(np.float32)


@pytest.mark.parametrize("position", ["tail", "suffix", "prefix"])
def test_scores_equal_the_in_process_backend(server, tiny_llama_dir, key_env, position):
    remote = _backend(server.url, tiny_llama_dir, prompt_position=position, cache_size=0, pairs_per_request=3)
    local = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                            prompt_position=position)
    for n_tokens in (0, 2, 5):
        prompts = _prompts(remote, n_tokens=n_tokens)
        np.testing.assert_allclose(remote.score(prompts, TEXTS, CLASSES), local.score(prompts, TEXTS, CLASSES),
                                   rtol=1e-5, atol=1e-5)
    assert remote.embedding_dim == 32
    mean, std = remote.embedding_stats()
    local_mean, local_std = local.embedding_stats()
    np.testing.assert_allclose(mean, local_mean, atol=1e-6)
    assert std == pytest.approx(local_std)
    assert remote.compute_dtype is None and local.compute_dtype == "float32"  # the server's --dtype decides
    if position == "tail":
        assert remote.default_prompt_length == local.default_prompt_length
        np.testing.assert_allclose(remote.initial_prompt(4), local.initial_prompt(4), atol=1e-7)


def test_label_words_outside_the_top_logprobs_are_asked_for(server, tiny_llama_dir, key_env):
    full = _backend(server.url, tiny_llama_dir, cache_size=0)
    top1 = _backend(server.url, tiny_llama_dir, cache_size=0, top_logprobs=1)
    prompts = _prompts(full, n=6, seed=1)
    np.testing.assert_allclose(top1.score(prompts, TEXTS, CLASSES), full.score(prompts, TEXTS, CLASSES), atol=1e-6)
    # the key check, the log-probabilities' mode, the pairs 16 per request, then one per class
    # for the pairs that miss it
    n_chunks = _scoring_requests(len(prompts), len(TEXTS))
    assert not top1.processed_logprobs and top1.max_top_k == 1
    assert top1.stats["label_requests"] > 0
    assert top1.stats["http_requests"] == 2 + n_chunks + top1.stats["label_requests"]


def _scoring_requests(n_prompts, n_texts, per_request=16):
    """Requests for every pair: each text's first pair in a first wave (so
    that the server's prefix cache holds the text), then the others."""
    def ceil(n):
        return -(-n // per_request)

    return ceil(n_texts) + ceil((n_prompts - 1) * n_texts) if n_prompts > 1 else ceil(n_texts)


def test_each_text_s_first_pair_is_answered_before_its_others(server, tiny_llama_dir, key_env, monkeypatch):
    remote = _backend(server.url, tiny_llama_dir, cache_size=0, pairs_per_request=3, max_concurrency=4)
    seen = []
    answer = remote._answer_scores
    monkeypatch.setattr(remote, "_answer_scores", lambda tensors, *a, **k: seen.append(len(tensors)) or answer(
        tensors, *a, **k))
    prompts = _prompts(remote, n=5, seed=4)
    order = []
    build = remote._layout.pair_inputs

    def spy(handle, p, texts):
        lengths, inner = build(handle, p, texts)
        return lengths, lambda pairs: order.append(list(pairs)) or inner(pairs)

    monkeypatch.setattr(remote._layout, "pair_inputs", spy)
    local = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0)
    np.testing.assert_allclose(remote.score(prompts, TEXTS, CLASSES), local.score(prompts, TEXTS, CLASSES),
                               rtol=1e-5, atol=1e-5)
    first_wave = [pair for chunk in order[:_scoring_requests(1, len(TEXTS), 3)] for pair in chunk]
    assert sorted(first_wave) == [(j, 0) for j in range(len(TEXTS))]
    assert sum(seen) == len(prompts) * len(TEXTS)


@pytest.fixture(scope="module")
def processed_server(tiny_llama_dir):
    fake = FakeVLLM(tiny_llama_dir, api_key=KEY, logprobs_mode="processed_logprobs")
    yield fake
    fake.close()


@pytest.mark.parametrize("top_logprobs", [1, 20])
def test_processed_logprobs_need_no_request_per_label_word(processed_server, tiny_llama_dir, key_env,
                                                           top_logprobs):
    remote = _backend(processed_server.url, tiny_llama_dir, cache_size=0, top_logprobs=top_logprobs)
    local = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0)
    prompts = _prompts(remote, n=6, seed=1)
    np.testing.assert_allclose(remote.score(prompts, TEXTS, CLASSES), local.score(prompts, TEXTS, CLASSES),
                               rtol=1e-5, atol=1e-5)
    assert remote.processed_logprobs
    n_chunks = _scoring_requests(len(prompts), len(TEXTS))
    assert remote.stats["label_requests"] == 0
    assert remote.stats["http_requests"] == 2 + n_chunks  # the key check and the mode, asked once
    remote.score(_prompts(remote, n=2, seed=2), TEXTS, CLASSES)
    assert remote.stats["http_requests"] == 2 + n_chunks + _scoring_requests(2, len(TEXTS))
    # its top tokens are the label words only: no "topk" read-out, and 'auto' does not offer it
    assert remote.max_top_k == 0
    with pytest.raises(ValueError, match="max_top_k=0"):
        BlackBoxPromptClassifier(remote, calibration="topk", max_iter=1).fit(FIT_TEXTS, FIT_Y)


@pytest.mark.parametrize("server_options, backend_options, message", [
    ({"logprobs_mode": "raw_logits"}, {}, "--logprobs-mode raw_logprobs.*not raw_logits"),
    ({"enable_prompt_embeds": False}, {}, "start the server with --enable-prompt-embeds"),
    ({"max_logprobs": 5}, {"top_logprobs": 8}, "start the server with --max-logprobs 8, or pass a smaller"),
])
def test_a_server_without_a_needed_feature_fails_before_any_query(tiny_llama_dir, key_env, server_options,
                                                                   backend_options, message):
    fake = FakeVLLM(tiny_llama_dir, api_key=KEY, **server_options)
    try:
        clf = BlackBoxPromptClassifier(_backend(fake.url, tiny_llama_dir, **backend_options), method="bbt",
                                       max_iter=2, random_state=0)
        with pytest.raises(BackendError, match=message):
            clf.fit(FIT_TEXTS, FIT_Y)
        assert fake.requests == 1  # the probe of the mode, no scoring request
    finally:
        fake.close()


def test_top_tokens_equal_the_in_process_backend_s(server, tiny_llama_dir, key_env):
    remote = _backend(server.url, tiny_llama_dir, cache_size=0, top_logprobs=8)
    local = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0)
    assert remote.max_top_k == 8
    prompts = _prompts(remote, n=2, seed=3)
    got, want = remote.score(prompts, TEXTS, CLASSES, top_k=5), local.score(prompts, TEXTS, CLASSES, top_k=5)
    np.testing.assert_allclose(got[..., :2 + 5], want[..., :2 + 5], atol=1e-5)
    np.testing.assert_array_equal(got[..., 2 + 5:], want[..., 2 + 5:])
    with pytest.raises(BackendError, match="max_top_k=8"):
        remote.score(prompts, TEXTS, CLASSES, top_k=9)


def test_label_only_answers_are_the_argmax_of_the_scores(server, tiny_llama_dir, key_env):
    scores = _backend(server.url, tiny_llama_dir).score(_prompts_for(server, tiny_llama_dir), TEXTS, CLASSES)
    labels = _backend(server.url, tiny_llama_dir, labels_only=True)
    np.testing.assert_array_equal(labels.predict_labels(_prompts_for(server, tiny_llama_dir), TEXTS, CLASSES),
                                  scores.argmax(-1))
    assert labels.stats["unknown_answers"] == 0
    with pytest.raises(BackendError, match="label-only"):
        labels.score(_prompts_for(server, tiny_llama_dir), TEXTS, CLASSES)


def _prompts_for(server, model_dir):
    return _prompts(_backend(server.url, model_dir), n=5, seed=2)


def test_free_answers_that_are_no_label_word(server, tiny_llama_dir, key_env):
    free = _backend(server.url, tiny_llama_dir, labels_only=True, restrict_answers=False, cache_size=0)
    prompts = _prompts(free, n=8, seed=3)
    first = free.predict_labels(prompts, TEXTS, CLASSES)
    unknown = free.stats["unknown_answers"]
    assert unknown > 0  # a random tiny model rarely says a label word
    np.testing.assert_array_equal(free.predict_labels(prompts, TEXTS, CLASSES), first)  # a fixed coin per input
    strict = _backend(server.url, tiny_llama_dir, labels_only=True, restrict_answers=False, unknown_answer="error")
    with pytest.raises(BackendError, match="no label word"):
        strict.predict_labels(prompts, TEXTS, CLASSES)


def test_missing_or_wrong_key_fails_before_any_query(server, tiny_llama_dir, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    before = server.requests
    clf = BlackBoxPromptClassifier(_backend(server.url, tiny_llama_dir), method="bbt", max_iter=2, random_state=0)
    with pytest.raises(BackendError, match="refused the API key.*No key was sent.*VLLM_API_KEY"):
        clf.fit(FIT_TEXTS, FIT_Y)
    wrong = BlackBoxPromptClassifier(_backend(server.url, tiny_llama_dir, api_key="nope"), method="bbt",
                                     max_iter=2, random_state=0)
    with pytest.raises(BackendError, match=r"refused the API key \(HTTP 401"):
        wrong.fit(FIT_TEXTS, FIT_Y)
    assert server.requests == before  # no completion was asked for
    monkeypatch.setenv("MY_KEY", KEY)
    assert _backend(server.url, tiny_llama_dir, api_key_env="MY_KEY").model == server.name


def test_the_key_is_never_kept(server, tiny_llama_dir, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    backend = _backend(server.url, tiny_llama_dir, api_key=KEY)
    backend.score(_prompts(backend, n=1), TEXTS[:1], CLASSES)
    assert backend.get_params()["api_key"] is None
    assert KEY not in repr(backend) and KEY not in str(backend.get_params())
    blob = pickle.dumps(backend)
    assert KEY.encode() not in blob
    restored = pickle.loads(blob)
    with pytest.raises(BackendError, match="refused the API key"):
        restored.score(_prompts(restored, n=1, seed=9), TEXTS[:1], CLASSES)
    monkeypatch.setenv("VLLM_API_KEY", KEY)  # an unpickled backend reads the environment
    restored = pickle.loads(blob)
    restored.score(_prompts(restored, n=1, seed=9), TEXTS[:1], CLASSES)
    monkeypatch.delenv("VLLM_API_KEY")
    twin = clone(backend)  # a clone in this process keeps the explicit key
    assert twin is not backend
    twin.score(_prompts(twin, n=1, seed=8), TEXTS[:1], CLASSES)
    backend.set_params(pairs_per_request=2)
    backend.score(_prompts(backend, n=1, seed=7), TEXTS[:1], CLASSES)


def test_http_errors_name_the_status_and_the_server_message(server, tiny_llama_dir, key_env):
    before = server.requests
    backend = _backend(server.url, tiny_llama_dir, top_logprobs=25, max_retries=3)
    with pytest.raises(BackendError, match="HTTP 400: .*greater than max allowed: 20"):
        backend.score(_prompts(backend, n=1), TEXTS[:1], CLASSES)
    assert server.requests == before + 1  # a 4xx is never retried
    with pytest.raises(BackendError, match="does not serve 'other'"):
        _backend(server.url, tiny_llama_dir, served_model="other").score(_prompts(backend, n=1), TEXTS[:1], CLASSES)
    dead = _backend("http://127.0.0.1:9", tiny_llama_dir, max_retries=1)  # nothing listens on port 9
    with pytest.raises(BackendError, match="failed after 2 attempt"):
        dead.score(_prompts(backend, n=1), TEXTS[:1], CLASSES)
    assert dead.stats["retries"] == 1


@pytest.mark.parametrize("bad", [dict(base_url="localhost:8000"), dict(model_dir="/nonexistent"),
                                 dict(pairs_per_request=0), dict(max_retries=-1), dict(timeout=float("nan")),
                                 dict(unknown_answer="skip"), dict(api_key=""), dict(prompt_position="middle")])
def test_bad_arguments_are_named(tiny_llama_dir, bad):
    args = {"base_url": "http://127.0.0.1:9", "model_dir": tiny_llama_dir, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        VLLMBackend(args.pop("base_url"), args.pop("model_dir"), **args)


def _fit(backend, **params):
    params = {"method": "bbt", "max_iter": 6, "random_state": 0, **params}
    return BlackBoxPromptClassifier(backend, **params).fit(FIT_TEXTS, FIT_Y)


def test_faults_on_a_fifth_of_requests_never_change_the_fit(server, tiny_llama_dir, key_env):
    clean = _fit(_backend(server.url, tiny_llama_dir))
    with FaultProxy(server.url, rate=0.2, seed=0, delay=1.5) as proxy:
        backend = _backend(proxy.url, tiny_llama_dir, timeout=1.0, max_retries=10, pairs_per_request=8)
        faulty = _fit(backend)
        proba = faulty.predict_proba(FIT_TEXTS)
        assert sum(proxy.counts[f] for f in ("503", "429", "drop", "reset", "delay")) >= 5
    assert backend.stats["retries"] >= 5
    np.testing.assert_array_equal(proba, clean.predict_proba(FIT_TEXTS))
    assert faulty.n_queries_ == clean.n_queries_


def test_server_killed_mid_fit_then_resumed_from_the_cache(server, tiny_llama_dir, key_env, tmp_path):
    clean_backend = _backend(server.url, tiny_llama_dir)
    clean = _fit(clean_backend)
    total = clean_backend.stats["pairs"]

    doomed = FakeVLLM(tiny_llama_dir, api_key=KEY)
    doomed.name = server.name  # the same served model as the clean run's
    cache = tmp_path / "queries.sqlite"
    first = _backend(doomed.url, tiny_llama_dir, cache=cache, max_retries=2)
    killer = {"n": 0}
    real_complete = doomed.complete

    def complete_then_die(body):
        killer["n"] += 1
        if killer["n"] == 6:
            threading_kill(doomed)
            raise ConnectionError("killed")
        return real_complete(body)

    doomed.complete = complete_then_die
    with pytest.raises(BackendError, match="failed after 3 attempt"):
        _fit(first)
    answered = first.stats["pairs"]
    assert 0 < answered < total

    again = _backend(server.url, tiny_llama_dir, cache=cache)  # "restarted": another port, same model
    resumed = _fit(again)
    assert again.stats["pairs"] == total - answered
    assert again.stats["disk_pairs"] >= answered
    np.testing.assert_array_equal(resumed.prompt_embeddings_, clean.prompt_embeddings_)
    np.testing.assert_array_equal(resumed.predict_proba(FIT_TEXTS), clean.predict_proba(FIT_TEXTS))


def threading_kill(fake):
    import threading

    threading.Thread(target=fake.close, daemon=True).start()


def test_eight_estimators_fit_concurrently_against_one_server(server, tiny_llama_dir, key_env):
    backend = _backend(server.url, tiny_llama_dir, max_concurrency=2)

    def job(seed):
        return _fit(clone(backend), random_state=seed, max_iter=3).predict(FIT_TEXTS)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(job, range(8)))
    assert all(len(r) == len(FIT_TEXTS) for r in results)


def test_a_model_redeployed_under_its_old_name_never_replays_old_answers(tiny_llama_dir, key_env, tmp_path,
                                                                         monkeypatch):
    # The served model's name and the client's directory stay; the weights change
    # (the client's embedding table too): the cache must not answer for them.
    import shutil

    from skprompt.backends import vllm
    from test_query_cache import _retrain_in_place

    model_dir = str(shutil.copytree(tiny_llama_dir, tmp_path / "model"))
    cache = tmp_path / "queries.sqlite"
    before = FakeVLLM(model_dir, api_key=KEY)
    try:
        first = _backend(before.url, model_dir, cache=cache)
        prompts = _prompts(first)
        old = first.score(prompts, FIT_TEXTS[:3], CLASSES)
    finally:
        before.close()
    _retrain_in_place(model_dir)
    monkeypatch.setattr(vllm, "_HANDLES", {})  # as in a new process
    after = FakeVLLM(model_dir, api_key=KEY)
    after.name = before.name
    try:
        second = _backend(after.url, model_dir, cache=cache)
        new = second.score(prompts, FIT_TEXTS[:3], CLASSES)
    finally:
        after.close()
    assert second.stats["disk_pairs"] == 0 and second.stats["pairs"] == len(prompts) * 3
    assert not np.allclose(new, old)

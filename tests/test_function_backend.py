"""FunctionBackend and the shared backend machinery (validation, accounting, cache)."""

import copy
import pickle

import numpy as np
import pytest

from skprompt.backends import BackendError, FunctionBackend

from toy_tasks import LinearToyModel


def constant_scores(prompts, texts):
    return np.tile(np.array([1.0, 2.0, 4.0]), (len(prompts), len(texts), 1))


def test_score_is_log_softmax_over_classes():
    backend = FunctionBackend(constant_scores, embedding_dim=3)
    out = backend.score(np.zeros((2, 1, 3)), ["a", "b"], classes=["x", "y", "z"])
    assert out.shape == (2, 2, 3)
    expected = np.array([1.0, 2.0, 4.0]) - np.log(np.exp([1.0, 2.0, 4.0]).sum())
    np.testing.assert_allclose(out[1, 0], expected)
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0)


def test_predict_labels_of_a_score_backend_is_argmax():
    model = LinearToyModel(n_classes=3, n_features=2)
    backend = FunctionBackend(model, embedding_dim=6)
    prompts = np.random.default_rng(0).standard_normal((4, 1, 6))
    texts = [f"t{i}" for i in range(7)]
    labels = backend.predict_labels(prompts, texts, ["a", "b", "c"])
    np.testing.assert_array_equal(labels, backend.score(prompts, texts, ["a", "b", "c"]).argmax(-1))


def test_function_receives_float32_and_list_of_str():
    seen = {}

    def fn(prompts, texts):
        seen["dtype"], seen["texts"] = prompts.dtype, texts
        return np.zeros((len(prompts), len(texts), 2))

    FunctionBackend(fn, embedding_dim=2).score(np.zeros((1, 3, 2), dtype=np.float64), ("u", "v"), [0, 1])
    assert seen["dtype"] == np.float32
    assert seen["texts"] == ["u", "v"]


@pytest.mark.parametrize(
    "returned, match",
    [
        (np.zeros((1, 2)), r"shape \(1, 2\); expected \(1, 2, 2\)"),
        (np.full((1, 2, 2), np.nan), "NaN or infinite"),
        (np.full((1, 2, 2), np.inf), "NaN or infinite"),
        (np.array([[["a", "b"], ["c", "d"]]]), "numeric scores"),
    ],
)
def test_bad_answers_are_reported_naming_the_function(returned, match):
    def my_api(prompts, texts):
        return returned

    backend = FunctionBackend(my_api, embedding_dim=2)
    with pytest.raises(BackendError, match=match) as info:
        backend.score(np.zeros((1, 1, 2)), ["a", "b"], [0, 1])
    assert "my_api" in str(info.value)


@pytest.mark.parametrize(
    "returned, match",
    [
        (np.array([[0, 2]]), r"outside \[0, 1\]"),
        (np.array([[0, -1]]), r"outside \[0, 1\]"),
        (np.array([[0.5, 1.0]]), "integer class indices"),
        (np.zeros((1, 2, 2)), r"expected \(1, 2\)"),
    ],
)
def test_label_only_answers_are_checked(returned, match):
    def label_api(prompts, texts):
        return returned

    backend = FunctionBackend(label_api, embedding_dim=2, labels_only=True)
    with pytest.raises(BackendError, match=match) as info:
        backend.predict_labels(np.zeros((1, 1, 2)), ["a", "b"], [0, 1])
    assert "label_api" in str(info.value)


def test_label_only_backend_refuses_scores():
    backend = FunctionBackend(lambda p, t: np.zeros((len(p), len(t)), int), embedding_dim=2, labels_only=True)
    with pytest.raises(BackendError, match="label-only"):
        backend.score(np.zeros((1, 1, 2)), ["a"], [0, 1])
    labels = backend.predict_labels(np.zeros((2, 1, 2)), ["a", "b", "c"], [0, 1])
    assert labels.shape == (2, 3) and labels.dtype == np.int64


@pytest.mark.parametrize(
    "prompts, texts, classes, match",
    [
        (np.zeros((1, 1, 3)), ["a"], [0, 1], r"shape \(n_prompts, n_prompt_tokens, 2\)"),
        (np.zeros((1, 2)), ["a"], [0, 1], "prompt_embeddings must have shape"),
        (np.full((1, 1, 2), np.nan), ["a"], [0, 1], "NaN"),
        (np.zeros((1, 1, 2)), "abc", [0, 1], "sequence of str"),
        (np.zeros((1, 1, 2)), ["a", 1], [0, 1], "sequence of str"),
        (np.zeros((1, 1, 2)), ["a"], [0], "at least two"),
    ],
)
def test_calls_are_validated(prompts, texts, classes, match):
    backend = FunctionBackend(constant_scores, embedding_dim=2)
    with pytest.raises(BackendError, match=match):
        backend.score(prompts, texts, classes)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"fn": 3, "embedding_dim": 2}, TypeError),
        ({"fn": constant_scores, "embedding_dim": 0}, ValueError),
        ({"fn": constant_scores, "embedding_dim": 2.0}, ValueError),
        ({"fn": constant_scores, "embedding_dim": 2, "embedding_std": -1.0}, ValueError),
    ],
)
def test_constructor_validates(kwargs, error):
    with pytest.raises(error):
        FunctionBackend(**kwargs)


def test_cache_answers_repeated_pairs_and_counts_calls():
    model = LinearToyModel()
    backend = FunctionBackend(model, embedding_dim=6)
    prompts = np.random.default_rng(1).standard_normal((3, 1, 6))
    texts = ["a", "b", "c", "d"]
    first = backend.score(prompts, texts, [0, 1])
    assert backend.stats == {"requests": 1, "pairs": 12, "cached_pairs": 0}
    again = backend.score(prompts, texts, [0, 1])
    np.testing.assert_array_equal(first, again)
    assert model.calls == [(3, 4)]
    assert backend.stats["cached_pairs"] == 12
    # a partly new request only asks for what is missing
    mixed = backend.score(prompts[:2], ["a", "e"], [0, 1])
    assert model.calls[-1] == (2, 1)
    np.testing.assert_array_equal(mixed[:, 0], first[:2, 0])
    # the result equals an uncached computation
    fresh = FunctionBackend(LinearToyModel(), embedding_dim=6, cache_size=0)
    np.testing.assert_allclose(mixed, fresh.score(prompts[:2], ["a", "e"], [0, 1]))
    backend.reset_stats()
    assert backend.stats["pairs"] == 0


def test_cache_is_bounded_and_can_be_disabled():
    model = LinearToyModel()
    backend = FunctionBackend(model, embedding_dim=6, cache_size=5)
    prompts = np.ones((1, 1, 6))
    backend.score(prompts, [f"t{i}" for i in range(10)], [0, 1])
    assert len(backend._cache) == 5
    nocache = FunctionBackend(model, embedding_dim=6, cache_size=0)
    model.calls.clear()
    nocache.score(prompts, ["a"], [0, 1])
    nocache.score(prompts, ["a"], [0, 1])
    assert model.calls == [(1, 1), (1, 1)]


def test_deepcopy_returns_self_and_pickle_drops_runtime_state():
    backend = FunctionBackend(LinearToyModel(), embedding_dim=6)
    assert copy.deepcopy(backend) is backend
    backend.score(np.ones((1, 1, 6)), ["a"], [0, 1])
    restored = pickle.loads(pickle.dumps(backend))
    assert restored.stats == {"requests": 0, "pairs": 0, "cached_pairs": 0}
    assert len(restored._cache) == 0
    np.testing.assert_allclose(
        restored.score(np.ones((1, 1, 6)), ["a"], [0, 1]), backend.score(np.ones((1, 1, 6)), ["a"], [0, 1])
    )


def test_embedding_stats():
    mean, std = FunctionBackend(constant_scores, embedding_dim=3, embedding_std=0.2).embedding_stats()
    np.testing.assert_array_equal(mean, np.zeros(3))
    assert std == 0.2
    assert FunctionBackend(constant_scores, embedding_dim=3).embedding_stats()[1] == 1.0

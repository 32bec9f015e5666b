"""FunctionBackend and the shared backend machinery (validation, accounting, cache)."""

import copy
import doctest
import pickle
import warnings

import numpy as np
import pytest

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import BackendError, FunctionBackend

from toy_tasks import LinearToyModel, make_toy_task


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
    assert backend.stats == {"requests": 1, "pairs": 12, "cached_pairs": 0, "disk_pairs": 0, "retries": 0}
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
    assert restored.stats == {"requests": 0, "pairs": 0, "cached_pairs": 0, "disk_pairs": 0, "retries": 0}
    assert len(restored._cache) == 0
    np.testing.assert_allclose(
        restored.score(np.ones((1, 1, 6)), ["a"], [0, 1]), backend.score(np.ones((1, 1, 6)), ["a"], [0, 1])
    )


def test_embedding_stats():
    mean, std = FunctionBackend(constant_scores, embedding_dim=3, embedding_std=0.2).embedding_stats()
    np.testing.assert_array_equal(mean, np.zeros(3))
    assert std == 0.2
    assert FunctionBackend(constant_scores, embedding_dim=3).embedding_stats()[1] == 1.0


# ------------------------------------------------------- -inf log-probabilities
def test_minus_inf_scores_are_allowed_and_floored():
    # a top-k log-probability API: a class outside the top tokens has no logprob
    def topk_api(prompts, texts):
        return np.tile(np.array([-0.2, -np.inf, -1.8]), (len(prompts), len(texts), 1))

    out = FunctionBackend(topk_api, embedding_dim=2).score(np.zeros((2, 1, 2)), ["a", "b"], ["x", "y", "z"])
    assert np.all(np.isfinite(out))
    from skprompt.backends.base import LOG_PROBA_FLOOR

    assert LOG_PROBA_FLOOR == np.log(np.finfo(np.float64).tiny)  # exp() of it is still > 0
    assert np.all(out[..., 1] == LOG_PROBA_FLOOR)
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0)
    expected = np.array([-0.2, -1.8]) - np.log(np.exp([-0.2, -1.8]).sum())
    np.testing.assert_allclose(out[1, 1, [0, 2]], expected)


def test_a_pair_with_every_class_minus_inf_is_refused_naming_the_function_and_text():
    def my_api(prompts, texts):
        out = np.zeros((len(prompts), len(texts), 2))
        out[0, 1] = -np.inf
        return out

    with pytest.raises(BackendError, match="-inf for every class") as info:
        FunctionBackend(my_api, embedding_dim=2).score(np.zeros((1, 1, 2)), ["ok", "unscored"], [0, 1])
    assert "my_api" in str(info.value) and "'unscored'" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_plus_inf_next_to_minus_inf_are_still_refused(bad):
    def my_api(prompts, texts):
        return np.tile(np.array([0.0, -np.inf, bad]), (len(prompts), len(texts), 1))

    with pytest.raises(BackendError, match="NaN or infinite") as info:
        FunctionBackend(my_api, embedding_dim=2).score(np.zeros((1, 1, 2)), ["a"], [0, 1, 2])
    assert "my_api" in str(info.value)


class TopKToyModel:
    """LinearToyModel's scores as a top-k log-probability API reports them:
    the classes outside the top ``k`` of a (prompt, text) pair are -inf."""

    def __init__(self, model, k):
        self.model, self.k = model, k

    def __call__(self, prompts, texts):
        s = np.asarray(self.model(prompts, texts), dtype=np.float64)
        out = np.full_like(s, -np.inf)
        top = np.argsort(-s, axis=-1)[..., : self.k]
        np.put_along_axis(out, top, np.take_along_axis(s, top, -1), -1)
        return out


@pytest.mark.parametrize("calibration", ["auto", "affine", None])
@pytest.mark.parametrize("method", ["bbt", "ensemble"])
def test_estimator_fits_and_predicts_on_top_1_answers_without_nan(method, calibration):
    _, texts, y, model = make_toy_task(n_texts=30, n_classes=3)
    backend = FunctionBackend(TopKToyModel(model, k=1), embedding_dim=model.embedding_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. invalid value (a NaN made)
        clf = BlackBoxPromptClassifier(backend, method=method, n_prompts=2, max_iter=3, popsize=6,
                                       intrinsic_dim=5, calibration=calibration, random_state=0)
        clf.fit(texts, y)
        proba = clf.predict_proba(texts)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.all(np.isfinite(clf.history_))  # the best training losses: ranked, not all inf
    if clf.offsets_ is not None:
        assert np.all(np.isfinite(clf.offsets_)) and np.all(np.isfinite(clf.scales_))


# ------------------------------------------------------------ fn takes classes
def by_name(prompts, texts, classes):
    """Scores keyed by class name: 'hi' high, everything else low."""
    row = [2.0 if c == "hi" else 0.0 for c in classes]
    return np.tile(row, (len(prompts), len(texts), 1))


def by_name_keyword(prompts, texts, *, classes):
    return by_name(prompts, texts, classes)


@pytest.mark.parametrize("fn", [by_name, by_name_keyword, lambda p, t, classes=None: by_name(p, t, classes)])
def test_fn_that_takes_classes_is_detected_and_gets_them_in_column_order(fn):
    backend = FunctionBackend(fn, embedding_dim=2)
    assert backend.classes_passed
    for classes in (["hi", "lo"], ["lo", "hi"], ["a", "hi", "b"]):
        out = backend.score(np.zeros((1, 1, 2)), ["t"], classes)
        assert out[0, 0].argmax() == classes.index("hi")


def test_two_argument_fn_is_called_with_two_arguments():
    calls = []

    def old_style(prompts, texts, temperature=1.0):  # a third parameter with a default is not the classes
        calls.append(temperature)
        return np.zeros((len(prompts), len(texts), 2))

    for fn in (old_style, constant_scores):
        assert not FunctionBackend(fn, embedding_dim=2).classes_passed
    FunctionBackend(old_style, embedding_dim=2).score(np.zeros((1, 1, 2)), ["a"], [0, 1])
    assert calls == [1.0]


def test_pass_classes_flag_overrides_detection():
    seen = []

    def variadic(prompts, texts, *rest):
        seen.append(rest)
        return np.zeros((len(prompts), len(texts), 2))

    assert not FunctionBackend(variadic, embedding_dim=2).classes_passed
    FunctionBackend(variadic, embedding_dim=2, pass_classes=True).score(np.zeros((1, 1, 2)), ["a"], ["x", "y"])
    assert seen == [(["x", "y"],)]
    never = FunctionBackend(lambda p, t, classes=None: constant_scores(p, t), embedding_dim=2, pass_classes=False)
    assert not never.classes_passed
    with pytest.raises(ValueError, match="takes no third argument"):
        FunctionBackend(constant_scores, embedding_dim=2, pass_classes=True)
    with pytest.raises(ValueError, match="pass_classes"):
        FunctionBackend(constant_scores, embedding_dim=2, pass_classes="yes")


def test_label_only_fn_gets_the_classes_too():
    def label_api(prompts, texts, classes):
        return np.full((len(prompts), len(texts)), classes.index("b"))

    backend = FunctionBackend(label_api, embedding_dim=2, labels_only=True)
    np.testing.assert_array_equal(backend.predict_labels(np.zeros((1, 1, 2)), ["t"], ["a", "b", "c"]), [[1]])


def test_estimator_passes_its_sorted_classes():
    seen = set()
    _, texts, y, model = make_toy_task(n_texts=20, n_classes=2, label_names=["pos", "neg"])

    def api(prompts, texts, classes):
        seen.add(tuple(classes))
        return model(prompts, texts)

    clf = BlackBoxPromptClassifier(FunctionBackend(api, embedding_dim=model.embedding_dim), method="bbt",
                                   max_iter=2, popsize=4, intrinsic_dim=3, random_state=0).fit(texts, y)
    clf.predict(texts)
    assert seen == {tuple(clf.classes_)} == {("neg", "pos")}


class ClassAwareModel:
    """Picklable fn(prompts, texts, classes)."""

    def __call__(self, prompts, texts, classes):
        return by_name(prompts, texts, classes)


def test_pickle_keeps_how_fn_is_called():
    backend = FunctionBackend(ClassAwareModel(), embedding_dim=2)
    restored = pickle.loads(pickle.dumps(backend))
    assert restored.classes_passed
    np.testing.assert_array_equal(restored.score(np.zeros((1, 1, 2)), ["t"], ["lo", "hi"]),
                                  backend.score(np.zeros((1, 1, 2)), ["t"], ["lo", "hi"]))
    # a pickle from before pass_classes existed calls fn(prompts, texts)
    old = FunctionBackend(LinearToyModel(), embedding_dim=6)
    state = old.__getstate__()
    del state["_classes_mode"], state["pass_classes"]
    legacy = FunctionBackend.__new__(FunctionBackend)
    legacy.__setstate__(state)
    assert not legacy.classes_passed
    assert legacy.score(np.ones((1, 1, 6)), ["a"], [0, 1]).shape == (1, 1, 2)


# ------------------------------------------------------ read-only prompt input
def test_fn_receives_a_read_only_array():
    flags = []

    def fn(prompts, texts):
        flags.append(prompts.flags.writeable)
        return np.zeros((len(prompts), len(texts), 2))

    FunctionBackend(fn, embedding_dim=2, cache_size=0).score(np.zeros((1, 1, 2), dtype=np.float32), ["a"], [0, 1])
    assert flags == [False]


@pytest.mark.parametrize("write", [
    lambda p: p.__setitem__((Ellipsis,), 0.0),
    lambda p: np.multiply(p, 2.0, out=p),
])
def test_fn_writing_into_its_input_gets_a_clear_error_and_cannot_change_the_estimator(write):
    _, texts, y, model = make_toy_task(n_texts=20)
    vandal = {"on": False}

    def api(prompts, texts):
        if vandal["on"]:
            write(prompts)
        return model(prompts, texts)

    backend = FunctionBackend(api, embedding_dim=model.embedding_dim, cache_size=0)
    clf = BlackBoxPromptClassifier(backend, method="bbt", max_iter=2, popsize=4, intrinsic_dim=3,
                                   random_state=0).fit(texts, y)
    before = clf.prompt_embeddings_.copy()
    vandal["on"] = True
    with pytest.raises(BackendError, match="read-only") as info:
        clf.predict_proba(texts)
    assert "api" in str(info.value) and "np.array(prompt_embeddings)" in str(info.value)
    np.testing.assert_array_equal(clf.prompt_embeddings_, before)
    direct = np.ones((1, 1, model.embedding_dim), dtype=np.float32)
    with pytest.raises(BackendError, match="read-only"):
        backend.score(direct, ["a"], [0, 1])
    assert np.all(direct == 1.0)


def test_docstring_examples_run():
    import skprompt.backends.function as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0

"""The calibrated read-out (skprompt/readout.py) and its use by the estimator.

Known answers: the read-out fit is the optimum of its convex objective
(checked against scipy), removes a constant label-word bias exactly, and,
through the estimator, every kept prompt carries its own read-out into
``predict_proba``. Also here: a tuned prompt that is no better than the
start is not kept (ties keep the start), at the estimator's defaults.
"""

import numpy as np
import pytest
from scipy.optimize import minimize

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import FunctionBackend
from skprompt.readout import apply_readout, choose_readout, fit_readout, fit_token_readout, token_features

from toy_tasks import LinearToyModel, make_toy_task


def _scores(rng, n, N, C, bias):
    y = rng.integers(0, C, N)
    s = rng.normal(size=(n, N, C))
    s[:, np.arange(N), y] += 1.5
    s += bias
    return s - np.log(np.exp(s).sum(-1, keepdims=True)), y


@pytest.mark.parametrize("kind", ["bias", "affine", "linear"])
def test_fit_is_the_optimum_of_the_penalised_log_loss(kind):
    rng = np.random.default_rng(0)
    for C in (2, 5):
        s, y = _scores(rng, 6, 40, C, rng.normal(size=C) * 2)
        b, a = fit_readout(s, y, kind, l2=0.01)
        prior = {"bias": np.zeros(C), "affine": np.r_[np.zeros(C), 1.0],
                 "linear": np.r_[np.zeros(C), np.eye(C).ravel()]}[kind]

        def obj(th, k):
            if kind == "linear":
                logits = s[k] @ th[C:].reshape(C, C).T + th[:C]
            else:
                logits = (th[C] if kind == "affine" else 1.0) * s[k] + th[:C]
            lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            # the L2 pull is on the summed log loss: l2 / 2 per text count
            return -lp[np.arange(len(y)), y].mean() + 0.5 * 0.01 / len(y) * np.sum((th - prior) ** 2)

        for k in range(len(s)):
            ref = minimize(obj, prior, args=(k,), method="BFGS", options={"gtol": 1e-10})
            mine = b[k] if kind == "bias" else np.r_[b[k], np.ravel(a[k])]
            assert obj(mine, k) <= ref.fun + 1e-9
            np.testing.assert_allclose(mine, ref.x, atol=1e-4)
            # what apply_readout gives is the fitted model's log-probabilities
            logits = (s[k] @ a[k].T if kind == "linear" else a[k] * s[k]) + b[k]
            np.testing.assert_allclose(apply_readout(s[k:k + 1], b[k:k + 1], a[k:k + 1])[0],
                                       logits - np.log(np.exp(logits).sum(-1, keepdims=True)), atol=1e-12)
        if kind == "bias":
            np.testing.assert_array_equal(a, 1.0)


def test_a_linear_map_learns_what_offsets_and_a_temperature_cannot():
    """Label words whose scores are swapped between two classes: no offset or
    temperature can undo a permutation, the linear map does, and the
    cross-validated log loss tells the families apart on held-out texts."""
    from skprompt.readout import cross_validated_log_loss

    rng = np.random.default_rng(1)
    s, y = _scores(rng, 1, 150, 3, np.zeros(3))
    swapped = s[..., [1, 0, 2]]
    cv = {kind: cross_validated_log_loss(swapped, y, kind)[0] for kind in (None, "bias", "affine", "linear")}
    assert cv["linear"] < min(cv["bias"], cv["affine"]) - 0.3, cv
    offsets, W = fit_readout(swapped, y, "linear")
    assert np.mean(apply_readout(swapped, offsets, W)[0].argmax(-1) == y) > 0.7
    assert W[0, 0, 1] > W[0, 0, 0] and W[0, 1, 0] > W[0, 1, 1]  # the map swaps them back
    # where the scores are right, the map stays near the identity and loses little to the offsets
    cv = {kind: cross_validated_log_loss(s, y, kind)[0] for kind in ("affine", "linear")}
    assert cv["linear"] < cv["affine"] + 0.05, cv


def test_the_default_pull_vanishes_as_texts_grow():
    """The L2 pull is on the summed log loss (issue #19, defect 5): with 1,000
    texts the default read-out is the unpenalised one (on the mean loss it had
    stayed -2.31 against -2.73), while with 20 texts it still shrinks."""
    rng = np.random.default_rng(0)
    gaps = {}
    for N in (20, 1000):
        s, y = _scores(rng, 1, N, 2, np.array([0.0, 3.0]))
        free = fit_readout(s, y, "bias", l2=1e-10)[0][0]
        default = fit_readout(s, y, "bias")[0][0]
        assert free[1] - free[0] < -2.0  # a large bias to remove
        gaps[N] = abs((default[1] - default[0]) - (free[1] - free[0]))
    assert gaps[1000] < 0.03 < 0.1 < gaps[20], gaps


def test_a_constant_label_word_bias_is_removed():
    # every text says class 0 with odds 9:1, labels balanced: the read-out gives 1/2
    s = np.log(np.tile([[0.9, 0.1]], (10, 1)))[None]
    y = np.array([0, 1] * 5)
    b, a = fit_readout(s, y, "bias", l2=1e-8)
    np.testing.assert_allclose(np.exp(apply_readout(s, b, a)), 0.5, atol=1e-5)
    assert b[0, 1] - b[0, 0] == pytest.approx(np.log(9.0), abs=1e-4)


def test_text_weights_change_the_fit_as_duplicated_texts_would():
    rng = np.random.default_rng(1)
    s, y = _scores(rng, 3, 12, 3, 0.0)
    w = rng.integers(1, 4, size=12)
    b_w, a_w = fit_readout(s, y, "affine", sample_weight=w)
    idx = np.repeat(np.arange(12), w)
    b_d, a_d = fit_readout(s[:, idx], y[idx], "affine")
    np.testing.assert_allclose(b_w, b_d, atol=1e-7)
    np.testing.assert_allclose(a_w, a_d, atol=1e-7)


class BiasedToyModel(LinearToyModel):
    """The linear toy whose label words carry a prior bias no small prompt removes."""

    def __init__(self, bias, **kw):
        super().__init__(**kw)
        self.bias = np.asarray(bias, dtype=float)

    def __call__(self, prompts, texts):
        return super().__call__(prompts, texts) + self.bias


def biased_task(n_texts=200, seed=3):
    backend, X, y, model = make_toy_task(n_texts=n_texts, seed=seed)
    biased = BiasedToyModel([6.0, 0.0])
    return FunctionBackend(biased, embedding_dim=biased.embedding_dim), X, y


def test_zero_shot_read_out_costs_one_query_per_text_and_removes_the_bias():
    backend, X, y = biased_task()
    raw = BlackBoxPromptClassifier(backend, method="zero-shot", calibration=None).fit(X[:40], y[:40])
    cal = BlackBoxPromptClassifier(backend, method="zero-shot").fit(X[:40], y[:40])  # "auto"
    assert raw.n_queries_ == 0 and cal.n_queries_ == 40
    assert cal.calibration_ == cal.fit_info_["calibration"]["chosen"] and cal.offsets_.shape == (1, 2)
    assert cal.fit_info_["calibration"]["n_texts"] == 40  # chosen on the texts it scored, at no extra query
    # the model without a prompt answers class 0 for every text: the read-out undoes that
    assert raw.predict_proba(X[40:])[:, 0].min() > 0.99
    p = cal.predict_proba(X[40:])
    assert abs(p[:, 0].mean() - np.mean(y[40:] == cal.classes_[0])) < 0.15


@pytest.mark.parametrize("calibration", ["affine", "linear"])
@pytest.mark.parametrize("method", ["bbt", "ensemble", "vi"])
def test_every_kept_prompt_carries_its_read_out_into_predict_proba(method, calibration):
    backend, X, y = biased_task()
    clf = BlackBoxPromptClassifier(backend, method=method, calibration=calibration, n_prompt_tokens=1,
                                   random_state=0, budget=6000).fit(X[:40], y[:40])
    k = len(clf.samples_)
    assert clf.calibration_ == calibration and "calibration" not in clf.fit_info_
    assert clf.offsets_.shape == (k, 2)
    assert clf.scales_.shape == ((k,) if calibration == "affine" else (k, 2, 2))
    assert clf.n_queries_ <= 6000
    raw = backend.score(clf.prompt_embeddings_, X[40:], list(clf.classes_))
    manual = np.exp(apply_readout(raw, clf.offsets_, clf.scales_))
    np.testing.assert_allclose(clf.predict_proba(X[40:]), clf.weights_ @ manual.transpose(1, 0, 2), atol=1e-10)
    if calibration == "affine":
        # the read-out of each kept prompt is the one fitted on its own training scores
        np.testing.assert_allclose(np.abs(np.diff(clf.offsets_, axis=1)).ravel(), 6.0, atol=3.0)


@pytest.mark.parametrize("calibration", ["affine", "linear"])
@pytest.mark.parametrize("method", ["bbt", "ensemble", "vi"])
def test_kept_prompts_read_outs_learn_from_every_fit_text(method, calibration, monkeypatch):
    # The search fits each candidate's read-out on the training texts; the kept
    # prompts' final read-outs are refitted on the training and validation
    # texts together (as the zero-shot read-out uses every fit text): known
    # answer, the fit of fit_readout on those answers.
    from skprompt import classifier

    made, split = [], classifier.validation_split
    monkeypatch.setattr(classifier, "validation_split", lambda *a, **k: made.append(split(*a, **k)) or made[-1])
    backend, X, y = biased_task()
    clf = BlackBoxPromptClassifier(backend, method=method, calibration=calibration, n_prompt_tokens=1,
                                   random_state=0, budget=6000).fit(X[:40], y[:40])
    (train_x, train_y), (val_x, val_y) = made[0][0]["train"], made[0][0]["val"]  # (splits, positions)
    raw = backend.score(clf.prompt_embeddings_, list(train_x) + list(val_x), list(clf.classes_))
    offsets, scales = fit_readout(raw, np.concatenate([train_y, val_y]), calibration)
    np.testing.assert_allclose(clf.offsets_, offsets, atol=1e-8)
    np.testing.assert_allclose(clf.scales_, scales, atol=1e-8)
    train_only, _ = fit_readout(raw[:, : len(train_x)], train_y, calibration)
    assert not np.allclose(clf.offsets_, train_only, atol=1e-3)


def test_bootstrap_members_refit_their_read_outs_with_their_weights(monkeypatch):
    from skprompt import classifier

    made, split = [], classifier.validation_split
    monkeypatch.setattr(classifier, "validation_split", lambda *a, **k: made.append(split(*a, **k)) or made[-1])
    backend, X, y = biased_task()
    clf = BlackBoxPromptClassifier(backend, calibration="affine", n_prompt_tokens=1, random_state=0, max_iter=5,
                                   method_params={"bootstrap": True}).fit(X[:40], y[:40])
    (train_x, train_y), (val_x, val_y) = made[0][0]["train"], made[0][0]["val"]  # (splits, positions)
    raw = backend.score(clf.prompt_embeddings_, list(train_x) + list(val_x), list(clf.classes_))
    w = np.concatenate([clf.fit_info_["bootstrap_weights"], np.ones((len(raw), len(val_x)))], axis=1)
    offsets, scales = fit_readout(raw, np.concatenate([train_y, val_y]), "affine", sample_weight=w)
    np.testing.assert_allclose(clf.offsets_, offsets, atol=1e-8)
    np.testing.assert_allclose(clf.scales_, scales, atol=1e-8)


class SwappedWordsModel:
    """Scores that rank the classes right, except that the label words of
    classes 0 and 1 trade places (``swap=True``); the prompt does nothing."""

    def __init__(self, w_true, swap):
        self.w_true, self.order = w_true, [1, 0, 2] if swap else [0, 1, 2]

    def __call__(self, prompts, texts):
        from toy_tasks import text_features

        phi = np.stack([text_features(t, 3) for t in texts])
        return np.broadcast_to(3.0 * (phi @ self.w_true.T)[:, self.order], (len(prompts), len(texts), 3))


@pytest.mark.parametrize("method", ["zero-shot", "bbt"])
def test_auto_read_out_is_the_linear_map_where_it_cross_validates_better(method):
    """Label words that swap two of three classes: no offsets and temperature
    can undo it, and "auto" finds the linear map, on the scores the fit asked
    for anyway; with the words in place it keeps offsets and a temperature."""
    rng = np.random.default_rng(0)
    w_true = rng.standard_normal((3, 3))
    texts = [f"review {i}" for i in range(360)]
    kw = dict(method=method, random_state=0) if method == "zero-shot" else dict(
        method=method, n_prompt_tokens=1, intrinsic_dim=4, max_iter=3, random_state=0)
    for swap, expected in ((True, "linear"), (False, "affine")):
        model = SwappedWordsModel(w_true, swap)
        backend = FunctionBackend(model, embedding_dim=9)
        y = np.array(["a", "b", "c"])[SwappedWordsModel(w_true, False)(np.zeros((1, 1, 9)), texts)[0].argmax(-1)]
        auto = BlackBoxPromptClassifier(backend, **kw).fit(texts[:60], y[:60])
        report = auto.fit_info_["calibration"]
        assert auto.calibration_ == report["chosen"] == expected, report
        fixed = BlackBoxPromptClassifier(backend, calibration="affine", **kw).fit(texts[:60], y[:60])
        assert auto.n_queries_ == fixed.n_queries_  # the choice costs no query
        if method != "zero-shot":  # chosen by the search on its training texts, then again on all 60
            assert report["n_texts"] == 60 and report["search_report"]["n_texts"] < 60
            assert report["search_chosen"] == report["search_report"]["chosen"] == expected
            assert "chosen again" in report["reason"]
        if swap:
            assert auto.score(texts[60:], y[60:]) > 0.9 > fixed.score(texts[60:], y[60:]) + 0.2
            assert report["cv_log_loss"]["linear"] < report["cv_log_loss"]["affine"]


def test_calibrated_search_beats_the_uncalibrated_one_on_a_biased_model():
    """At the estimator's defaults (dim 50, popsize 8, 15 generations, 4 members),
    over 3 seeds: the label-word bias of 6 nats leaves the raw search near the
    majority class, the calibrated one learns the task."""
    backend, X, y = biased_task(n_texts=300)
    acc = {None: [], "bias": []}
    for seed in range(3):
        for cal in acc:
            clf = BlackBoxPromptClassifier(backend, calibration=cal, n_prompt_tokens=1, random_state=seed)
            acc[cal].append(clf.fit(X[:48], y[:48]).score(X[48:], y[48:]))
    assert np.mean(acc["bias"]) > np.mean(acc[None]) + 0.1, acc


@pytest.mark.parametrize("loss", ["ce", "zero_one"])
@pytest.mark.parametrize("validation_fraction", [0.25, None])
def test_a_flat_objective_keeps_the_start(loss, validation_fraction):
    """Every prompt gives the same scores: no tuned prompt is better than z = 0,
    so every member keeps z = 0 (estimator defaults otherwise)."""

    def flat(prompts, texts):
        return np.zeros((len(prompts), len(texts), 2)) + np.array([0.3, 0.0])

    X = [f"t{i}" for i in range(24)]
    y = ["a", "b"] * 12
    clf = BlackBoxPromptClassifier(FunctionBackend(flat, embedding_dim=8), loss=loss, calibration=None,
                                   validation_fraction=validation_fraction, random_state=0).fit(X, y)
    np.testing.assert_array_equal(clf.samples_, 0.0)
    assert clf.fit_info_["kept_start"] == [True] * 4


def test_bootstrap_members_fit_their_own_weights_of_the_texts():
    backend, X, y = biased_task()
    kw = dict(n_prompt_tokens=1, random_state=0, max_iter=5)
    clf = BlackBoxPromptClassifier(backend, method_params={"bootstrap": True}, **kw).fit(X[:40], y[:40])
    w = clf.fit_info_["bootstrap_weights"]
    assert w.shape == (4, 30)  # 4 members, 30 training texts after the 25% validation split
    np.testing.assert_allclose(w.mean(axis=1), 1.0)
    assert np.ptp(w, axis=0).min() > 0  # every text weighs differently in different members
    plain = BlackBoxPromptClassifier(backend, **kw).fit(X[:40], y[:40])
    assert "bootstrap_weights" not in plain.fit_info_
    assert not np.allclose(clf.samples_, plain.samples_)
    again = BlackBoxPromptClassifier(backend, method_params={"bootstrap": True}, **kw).fit(X[:40], y[:40])
    np.testing.assert_array_equal(again.predict_proba(X[40:]), clf.predict_proba(X[40:]))


# ------------------------------------------------------------ the "topk" read-out
AUTO_AND_TOPK = ("affine", "linear", "topk")


class TopicTokenModel:
    """A model whose label words say nothing (equal scores, plus a prompt
    term), but whose answer names a topic token of the text's class (token
    ``100 + class``) among distractors, and a wrong one in ``noise`` of the
    texts: the ``"topk"`` read-out can learn the class, offsets and a
    temperature cannot. Texts are ``"<class> <i>"``."""

    def __init__(self, n_classes=3, noise=0.15, seed=0):
        self.n_classes, self.noise, self.seed = n_classes, noise, seed

    def __call__(self, prompts, texts, classes, top_k=0):
        n_p, C = len(prompts), len(classes)
        scores = np.zeros((n_p, len(texts), C))
        if prompts.shape[1]:
            scores += prompts[:, 0, :C][:, None, :]
        if not top_k:
            return scores
        top = np.empty((n_p, len(texts), 2 * top_k))
        for j, text in enumerate(texts):
            label, i = (int(v) for v in text.split())
            rng = np.random.default_rng([self.seed, i])
            topic = label if rng.random() > self.noise else (label + 1 + rng.integers(self.n_classes - 1)) % C
            distract = rng.choice(np.arange(200, 260), top_k - 1, replace=False)
            values = np.sort(rng.uniform(-6.0, -2.0, top_k - 1))[::-1]
            top[:, j, :top_k] = np.concatenate([[-0.7], values])
            top[:, j, top_k:] = np.concatenate([[100 + topic], distract])
        return np.concatenate([scores, top], axis=-1)


def topic_task(n_texts, seed=0, noise=0.15):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n_texts)
    return [f"{c} {1000 * seed + i}" for i, c in enumerate(y)], np.array(["a", "b", "c"])[y]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_read_out_learns_a_class_the_label_words_miss(seed):
    backend = FunctionBackend(TopicTokenModel(seed=seed), embedding_dim=4, max_top_k=10)
    X, y = topic_task(360, seed)
    topk = BlackBoxPromptClassifier(backend, method="zero-shot", calibration="topk").fit(X[:60], y[:60])
    affine = BlackBoxPromptClassifier(backend, method="zero-shot", calibration="affine").fit(X[:60], y[:60])
    assert topk.top_k_ == 10 and len(topk.token_maps_) == 1 and affine.token_maps_ is None
    # 85 % of the texts name their own topic token (among 9 distractors): from 60 texts the read-out
    # gets most of that (0.67-0.74 on these seeds), the label words chance
    assert topk.score(X[60:], y[60:]) > 0.6
    assert affine.score(X[60:], y[60:]) < 0.45
    # what predict_proba gives is the read-out applied to the backend's answers
    raw = backend.score(topk.prompt_embeddings_, X[60:], list(topk.classes_), top_k=10)
    np.testing.assert_allclose(topk.predict_proba(X[60:]),
                               np.exp(apply_readout(raw, topk.offsets_, topk.scales_, topk.token_maps_))[0])
    # the choice of "auto" among the families, at no query
    kind, report = choose_readout(raw[:, :60], np.searchsorted(topk.classes_, y[60:120]), kinds=AUTO_AND_TOPK,
                                  n_classes=3)
    assert kind == "topk", report


def test_token_read_out_with_a_strong_pull_is_the_affine_read_out():
    rng = np.random.default_rng(0)
    s, y = _scores(rng, 2, 80, 3, np.array([0.5, 0.0, -0.5]))
    top = np.sort(rng.uniform(-8, -0.1, (2, 80, 5)), axis=-1)[..., ::-1]
    ids = rng.integers(0, 30, (2, 80, 5))
    out = np.concatenate([s, top, ids], axis=-1)
    b, a, maps = fit_token_readout(out, y, 3, token_l2=1e5)
    b_aff, a_aff = fit_readout(s, y, "affine")
    np.testing.assert_allclose(b, b_aff, atol=1e-4)
    np.testing.assert_allclose(a, a_aff, atol=1e-4)
    assert max(np.abs(m["weights"]).max() for m in maps) < 1e-3  # of order (summed gradient) / token_l2


def test_token_read_out_is_the_optimum_of_its_penalised_log_loss():
    rng = np.random.default_rng(1)
    s, y = _scores(rng, 1, 50, 2, 0.0)
    top = np.sort(rng.uniform(-8, -0.1, (1, 50, 4)), axis=-1)[..., ::-1]
    ids = rng.integers(0, 8, (1, 50, 4))
    out = np.concatenate([s, top, ids], axis=-1)
    b, a, maps = fit_token_readout(out, y, 2, l2=0.5, token_l2=3.0)
    m = maps[0]
    F = (np.concatenate([token_features(out[0], 2, m["vocabulary"]), s[0]], axis=1) - m["centre"]) / m["spread"]

    def objective(theta):
        bb, aa, W = theta[:2], theta[2], theta[3:].reshape(2, -1)
        logits = aa * s[0] + bb + F @ W.T
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -logp[np.arange(50), y].sum() + 0.25 * (bb @ bb + (aa - 1) ** 2) + 1.5 * np.sum(W * W)

    theta = np.concatenate([b[0], a, m["weights"].ravel()])
    best = minimize(objective, np.concatenate([[0, 0, 1], np.zeros(theta.size - 3)]), method="BFGS", tol=1e-10)
    assert objective(theta) <= best.fun + 1e-6


def test_token_features_floor_a_missing_token_at_the_text_s_smallest_top_value():
    out = np.array([[0.0, 0.0, -0.1, -2.0, 7, 3], [0.0, 0.0, -0.5, -1.0, 3, 9]])
    feats = token_features(out, 2, np.array([3, 7, 9]))
    np.testing.assert_allclose(feats, [[-2.0, -0.1, -2.0], [-0.5, -1.0, -1.0]])


def test_token_read_out_needs_a_backend_with_top_tokens():
    calls = []

    def fn(prompts, texts):
        calls.append(1)
        return np.zeros((len(prompts), len(texts), 2))

    clf = BlackBoxPromptClassifier(FunctionBackend(fn, embedding_dim=4), method="zero-shot", calibration="topk")
    with pytest.raises(ValueError, match="calibration='topk'.*max_top_k=0"):
        clf.fit(["a", "b", "c", "d"], [0, 1, 0, 1])
    assert not calls


@pytest.mark.filterwarnings("ignore::skprompt.BudgetWarning")
def test_token_read_out_through_a_search_and_a_pickle():
    import pickle

    backend = FunctionBackend(TopicTokenModel(seed=0), embedding_dim=4, max_top_k=10)
    X, y = topic_task(200, 0)
    clf = BlackBoxPromptClassifier(backend, method="ensemble", calibration="topk", n_prompt_tokens=1,
                                   random_state=0, budget=8000).fit(X[:60], y[:60])
    k = len(clf.samples_)
    assert clf.calibration_ == "topk" and len(clf.token_maps_) == k and clf.scales_.shape == (k,)
    assert clf.score(X[60:], y[60:]) > 0.6
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X[60:]), clf.predict_proba(X[60:]))


def test_docstring_examples_run():
    import doctest

    import skprompt.readout as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0

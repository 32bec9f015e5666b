"""Every method through the estimator on the toy black box (tests/toy_tasks.py).

Each must reach >= 0.9 held-out accuracy, give valid probabilities, honour the
query budget and be deterministic under random_state.
"""

import pickle
import re
import warnings
import zlib

import numpy as np
import pytest

from skprompt import BlackBoxPromptClassifier, BudgetWarning
from skprompt.backends import BackendError, FunctionBackend

from sklearn.metrics import log_loss
from toy_tasks import make_toy_task, text_features

SETTINGS = {
    "bbt": dict(max_iter=40),
    "ensemble": dict(n_prompts=3, max_iter=40),
    "vi": dict(n_prompts=8, max_iter=40, method_params={"n_mc": 4}),
    "abc-smc": dict(n_prompts=30, method_params={"max_rounds": 10, "move": "mcmc"}),
    "snpe": dict(n_prompts=30, method_params={"n_rounds": 2, "n_simulations": 300}),
}
METHODS = [pytest.param(m, marks=pytest.mark.sbi) if m == "snpe" else m for m in SETTINGS]


def make(method, backend, **kw):
    params = dict(method=method, n_prompt_tokens=1, intrinsic_dim=6, popsize=8, sigma0=1.0, random_state=0)
    params.update(SETTINGS[method])
    params.update(kw)
    return BlackBoxPromptClassifier(backend, **params)


@pytest.fixture(scope="module")
def task():
    backend, X, y, _ = make_toy_task(n_texts=240, seed=2)
    return backend, X[:80], y[:80], X[80:], y[80:]


@pytest.mark.parametrize("method", METHODS)
def test_method_learns_the_toy_task(method, task):
    if method == "snpe":
        pytest.importorskip("sbi")
    backend, X, y, X_test, y_test = task
    clf = make(method, backend).fit(X, y)
    assert clf.score(X_test, y_test) >= 0.9
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.all((proba >= 0) & (proba <= 1))
    assert clf.samples_.shape[0] == clf.weights_.shape[0] == clf.prompt_embeddings_.shape[0]
    np.testing.assert_allclose(clf.weights_.sum(), 1.0)
    assert clf.labels_only_ == (method in ("abc-smc", "snpe"))
    if clf.labels_only_:  # vote smoothing keeps every probability away from 0
        assert proba.min() > 0


FIT_INFO_KEYS = {  # a few of each learner's documented diagnostics
    "bbt": {"selection_losses"},
    "ensemble": {"selection_losses"},
    "vi": {"mean", "variance", "elbo", "val_log_loss"},
    "abc-smc": {"tolerance", "acceptance_rate", "ess", "kept_round", "stop_reason"},
    "snpe": {"n_simulations", "round_mean_error", "val_errors", "selected_round"},
}


@pytest.mark.parametrize("method", METHODS)
def test_fit_info_exposes_the_learners_diagnostics(method, task):
    if method == "snpe":
        pytest.importorskip("sbi")
    backend, X, y, _, _ = task
    clf = make(method, backend, budget=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        clf.fit(X, y)
    assert FIT_INFO_KEYS[method] <= set(clf.fit_info_)
    if method == "vi":  # the kept q is the one the samples were drawn from
        np.testing.assert_allclose(clf.samples_.mean(axis=0), clf.fit_info_["mean"],
                                   atol=4 * np.sqrt(clf.fit_info_["variance"].max() / len(clf.samples_)))
    if method == "abc-smc":  # one tolerance per round, never looser than the one before
        tol = np.asarray(clf.fit_info_["tolerance"])
        assert len(tol) == clf.n_iter_ and np.all(np.diff(tol) <= 0)
    if method == "snpe":
        assert len(clf.fit_info_["round_mean_error"]) == len(clf.fit_info_["n_simulations"]) == clf.n_iter_
        assert all(0 < n <= 300 for n in clf.fit_info_["n_simulations"])  # n_simulations=300 per round
    restored = pickle.loads(pickle.dumps(clf))
    assert set(restored.fit_info_) == set(clf.fit_info_)
    zero_shot = BlackBoxPromptClassifier(backend, method="zero-shot").fit(X, y)
    assert set(zero_shot.fit_info_) == {"calibration"}  # no learner: only the read-out's choice
    assert ("calibration" in clf.fit_info_) == (not clf.labels_only_)


@pytest.mark.sbi
def test_estimator_emits_the_learners_warnings_at_the_users_call():
    """A label-only API that ignores the prompt: SNPE's posterior is the prior,
    and ``fit`` says so with a PosteriorWarning attributed to this file."""
    pytest.importorskip("sbi")
    from skprompt import PosteriorWarning
    from skprompt.backends import FunctionBackend

    def api(prompts, texts):  # the label depends on the text only
        return np.tile([len(t) % 2 for t in texts], (len(prompts), 1))

    X = [f"text {'x' * i}" for i in range(40)]
    y = np.array(["even", "odd"])[np.arange(40) % 2]  # any labels: no prompt changes the API's answers
    clf = BlackBoxPromptClassifier(FunctionBackend(api, embedding_dim=4, labels_only=True), method="snpe",
                                   n_prompt_tokens=1, intrinsic_dim=3, random_state=0,
                                   method_params={"n_rounds": 1, "n_simulations": 100})
    with pytest.warns(PosteriorWarning, match="rules out almost nothing of the prior") as record:
        clf.fit(X, y)
    assert [w.filename for w in record if w.category is PosteriorWarning] == [__file__]
    assert clf.fit_info_["prior_overlap"][-1] >= 0.99


@pytest.mark.parametrize("method", METHODS)
def test_method_is_deterministic(method, task):
    if method == "snpe":
        pytest.importorskip("sbi")
    backend, X, y, X_test, _ = task
    a = make(method, backend, random_state=5).fit(X, y)
    b = make(method, backend, random_state=5).fit(X, y)
    np.testing.assert_array_equal(a.samples_, b.samples_)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))


@pytest.mark.parametrize("method", METHODS)
def test_method_honours_budget(method, task):
    if method == "snpe":
        pytest.importorskip("sbi")
    _, X, y, _, _ = task
    _, _, _, model = make_toy_task(n_texts=240, seed=2)
    budget = 6000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        # no cache: every query the estimator counts reaches the model, read-outs included
        clf = make(method, FunctionBackend(model, embedding_dim=model.embedding_dim, cache_size=0),
                   budget=budget).fit(X, y)
    assert 0 < clf.n_queries_ == sum(p * t for p, t in model.calls) <= budget


def test_label_only_backend_with_likelihood_free_method():
    backend, X, y, _ = make_toy_task(n_texts=200, seed=4, labels_only=True)
    clf = make("abc-smc", backend).fit(X[:80], y[:80])
    assert clf.score(X[80:], y[80:]) >= 0.9
    with pytest.raises(BackendError, match="label-only"):
        backend.score(clf.prompt_embeddings_, X[:2], clf.classes_)


def test_vi_refuses_a_label_only_backend_before_querying():
    backend, X, y, model = make_toy_task(n_texts=20, labels_only=True)
    with pytest.raises(ValueError, match="method='vi' needs class scores"):
        make("vi", backend).fit(X, y)
    assert model.calls == []


def test_vote_smoothing():
    backend, X, y, _ = make_toy_task(n_texts=200, seed=4)
    raw = make("abc-smc", backend, vote_smoothing=0.0).fit(X[:80], y[:80])
    smooth = make("abc-smc", backend, vote_smoothing=1.0).fit(X[:80], y[:80])
    p_raw, p_smooth = raw.predict_proba(X[80:]), smooth.predict_proba(X[80:])
    assert p_raw.min() == 0.0  # unanimous votes without smoothing
    assert p_smooth.min() > 0.0
    n, K = 2, len(smooth.weights_)
    # smoothing is (votes + a) / (1 + n a) with a = vote_smoothing / K: check on a unanimous text
    unanimous = np.flatnonzero(p_raw.max(axis=1) == 1.0)[0]
    a = 1.0 / K
    np.testing.assert_allclose(p_smooth[unanimous].max(), (1 + a) / (1 + n * a))
    np.testing.assert_array_equal(p_raw.argmax(1), p_smooth.argmax(1))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"method": "vi", "method_params": {"bogus": 1}}, "bogus"),
        ({"method": "abc-smc", "method_params": {"quantile": 2.0}}, "quantile"),
        ({"method": "abc-smc", "method_params": {"n_particles": 1}}, "n_particles"),
        ({"method": "ensemble", "method_params": {"n_mc": 3}}, "unknown key"),
        ({"method": "bbt", "method_params": {"bootstrap": "yes"}}, "must be a bool"),
        ({"method": "ensemble", "method_params": {"keep_start": 1}}, r"method_params\['keep_start'\] must be a bool"),
        ({"method": "vi", "method_params": {"keep_start": True}}, "keep_start"),
        ({"method": "zero-shot", "method_params": {"n_mc": 3}}, "method_params must be empty"),
        ({"method": "abc-smc", "calibration": "bias"}, "uses predicted labels only"),
        ({"method": "bbt", "calibration": "platt"}, "calibration must be one of"),
        ({"method": "abc-smc", "vote_smoothing": -1.0}, "vote_smoothing must be >= 0"),
    ],
)
def test_method_params_are_validated_before_querying(params, match):
    backend, X, y, model = make_toy_task(n_texts=20)
    with pytest.raises(ValueError, match=match):
        BlackBoxPromptClassifier(backend, **params).fit(X, y)
    assert model.calls == []


def test_predict_uncertainty_decomposition(task):
    backend, X, y, X_test, _ = task
    ens = make("ensemble", backend, max_iter=5).fit(X, y)
    u = ens.predict_uncertainty(X_test)
    proba = ens.predict_proba(X_test)
    total = -(proba * np.log(proba)).sum(axis=1)
    np.testing.assert_allclose(u.total, total, atol=1e-10)
    assert np.all(u.aleatoric >= 0) and np.all(u.epistemic >= 0)
    np.testing.assert_allclose(u.total, u.aleatoric + u.epistemic, atol=1e-10)
    assert u.epistemic.max() > 0  # independent runs disagree somewhere

    bbt = make("bbt", backend, max_iter=5).fit(X, y)
    np.testing.assert_allclose(bbt.predict_uncertainty(X_test).epistemic, 0.0, atol=1e-12)

    abc = make("abc-smc", backend).fit(X, y)
    ua = abc.predict_uncertainty(X_test)
    np.testing.assert_array_equal(ua.aleatoric, 0.0)
    votes = abc.predict_proba(X_test) if abc.vote_smoothing == 0 else None
    assert votes is None  # default smoothing is on; vote entropy uses the raw histogram
    raw = make("abc-smc", backend, vote_smoothing=0.0).fit(X, y).predict_proba(X_test)
    with np.errstate(divide="ignore", invalid="ignore"):
        vote_entropy = -np.where(raw > 0, raw * np.log(raw), 0).sum(axis=1)
    np.testing.assert_allclose(ua.total, vote_entropy, atol=1e-12)
    assert set(u.as_dict()) == {"total", "aleatoric", "epistemic"}


def test_error_channel_reads_each_prompts_error_on_texts_that_did_not_select_it():
    """With label noise, a kept prompt's error on the texts that selected it is
    optimistic; the channel must use held-out (validation) texts. Over 5 seeds,
    the mean smoothed error rate is within 0.06 of the kept prompts' error on
    fresh texts, and closer to it than their training error is (measured on
    the code before the fix: fit error 0.21 vs 0.37 held out on such a toy)."""
    gaps, train_gaps = [], []
    for seed in range(5):
        backend, X, y, _ = make_toy_task(n_texts=400, seed=10 + seed)
        rng = np.random.default_rng(seed)
        y = y.copy()
        flip = rng.random(len(y)) < 0.25
        y[flip] = np.where(y[flip] == "class_0", "class_1", "class_0")
        X_fit, y_fit, X_new, y_new = X[:40], y[:40], X[40:], y[40:]
        clf = make("abc-smc", backend, random_state=seed).fit(X_fit, y_fit)
        w = clf.weights_
        def weighted_error(texts, labels):
            votes = backend.predict_labels(clf.prompt_embeddings_, texts, clf.classes_)
            return float(w @ (votes != np.searchsorted(clf.classes_, labels)[None, :]).mean(axis=1))
        held_out = weighted_error(X_new, y_new)
        gaps.append(float(w @ clf.vote_error_rates_) - held_out)
        train_gaps.append(weighted_error(X_fit, y_fit) - held_out)
    assert abs(np.mean(gaps)) < 0.06, gaps
    assert abs(np.mean(gaps)) < abs(np.mean(train_gaps)), (gaps, train_gaps)


def test_error_channel_costs_no_query_and_survives_a_spent_budget(task):
    backend, X, y, X_test, _ = task
    clf = make("abc-smc", backend, vote_smoothing="error").fit(X, y)
    raw = make("abc-smc", backend, vote_smoothing=0.0).fit(X, y)
    assert clf.n_queries_ == raw.n_queries_  # the kept prompts were validated: their answers are known
    n_val = round(0.25 * len(X))
    errors = clf.vote_error_rates_ * (n_val + 2) - 1
    np.testing.assert_allclose(errors, np.round(errors), atol=1e-9)  # counts on the validation texts
    assert np.all((errors >= 0) & (errors <= n_val))
    votes = backend.predict_labels(clf.prompt_embeddings_, X_test, clf.classes_)
    unanimous = np.flatnonzero((votes == votes[0]).all(axis=0))[0]
    expected = np.sum(clf.weights_ * (1 - clf.vote_error_rates_))
    np.testing.assert_allclose(clf.predict_proba([X_test[unanimous]])[0].max(), expected)
    # a budget the learner spends to the last query still leaves the error rates
    with pytest.warns(BudgetWarning):
        spent = make("abc-smc", backend, budget=4000).fit(X, y)
    assert spent.vote_error_rates_ is not None and spent.n_queries_ <= 4000


def test_error_channel_without_validation_texts_warns_and_uses_a_pseudo_count(task):
    backend, X, y, X_test, _ = task
    with pytest.warns(UserWarning, match="pseudo-count of 1"):
        clf = make("abc-smc", backend, validation_fraction=None).fit(X, y)
    assert clf.vote_error_rates_ is None
    np.testing.assert_allclose(clf.predict_proba(X_test), make("abc-smc", backend, validation_fraction=None,
                                                                vote_smoothing=1.0).fit(X, y).predict_proba(X_test))


def test_error_channel_of_selected_members_is_read_out_of_fold():
    """bbt/ensemble with a label-only backend keep, per member, the candidate with
    the lowest validation error; read on those same texts its error is optimistic
    (issue #19, defect 1). Leave-one-out re-selection reads each member's error on
    texts that did not choose it. The review's toy: 25 % label noise, 30 training
    and 10 validation texts, 16 seeds. Mean gap to fresh texts when this test was
    written: +0.064 (standard error 0.039; conservative, a choice made on one
    text fewer), against -0.050 (0.022) when read on the choosing texts."""
    gaps = []
    for seed in range(16):
        backend, X, y, _ = make_toy_task(n_texts=440, seed=20 + seed, labels_only=True)
        rng = np.random.default_rng(seed)
        y = y.copy()
        flip = rng.random(len(y)) < 0.25
        y[flip] = np.where(y[flip] == "class_0", "class_1", "class_0")
        X_fit, y_fit, X_new, y_new = X[:40], y[:40], X[40:], y[40:]
        clf = make("ensemble", backend, loss="zero_one", random_state=seed).fit(X_fit, y_fit)
        votes = backend.predict_labels(clf.prompt_embeddings_, X_new, clf.classes_)
        held_out = (votes != np.searchsorted(clf.classes_, y_new)[None, :]).mean(axis=1)
        gaps.append(float(np.mean(clf.vote_error_rates_ - held_out)))
    assert clf.vote_offsets_ is not None  # the calibrated vote read-out is the default
    # leave-one-out reads the choice made on one text fewer: conservative, never optimistic
    assert -0.02 < np.mean(gaps) < 0.15, gaps


@pytest.mark.parametrize("method, params", [
    ("bbt", {"loss": "zero_one"}), ("ensemble", {"loss": "zero_one"}), ("abc-smc", {}),
    ("snpe", {"method_params": {"inference": "factorised", "n_rounds": 2, "n_simulations": 60}})])
def test_every_validated_choice_is_re_made_without_each_text(method, params, monkeypatch):
    """Each learner that keeps what validates best records its options, and the
    estimator accepts the record (it re-makes the learner's own choice) and reads
    the votes out of fold from it, not from the texts that chose."""
    import skprompt.classifier as classifier

    calls = []
    real = classifier.out_of_fold_votes
    monkeypatch.setattr(classifier, "out_of_fold_votes", lambda *a: calls.append(1) or real(*a))
    backend, X, y, _ = make_toy_task(n_texts=48, seed=4, labels_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = make(method, backend, **params).fit(X, y)
    assert calls == [1] and clf.vote_offsets_ is not None


def test_budget_at_the_named_minimum_runs_an_iteration_with_the_read_out():
    """With calibration on (the default), the minimum budget the estimator names
    pays for the start's read-out too (issue #19, defect 3): bbt and ensemble at
    that budget run at least one iteration, and count exactly what they asked."""
    backend, X, y, model = make_toy_task(n_texts=48)
    for method in ("bbt", "ensemble"):
        with pytest.raises(ValueError, match=r"below the (\d+) queries") as err:
            make(method, backend, budget=1).fit(X, y)
        needed = int(re.search(r"below the (\d+) queries", str(err.value)).group(1))
        model.calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = make(method, FunctionBackend(model, embedding_dim=model.embedding_dim, cache_size=0),
                       budget=needed).fit(X, y)
        assert clf.n_iter_ >= 1, (method, needed)
        assert clf.n_queries_ == sum(p * t for p, t in model.calls) <= needed


# ------------------------------------------------- keep_start: the start against noise
class NoisyPrompts:
    """Every prompt but the start adds noise: the scores carry the label through
    a fixed, imperfect signal, and a prompt z != 0 adds a pseudo-random term per
    (prompt, text) that no search can learn (it changes with any change of the
    prompt). So no tuned prompt is better than z = 0 in expectation, and a tuned
    prompt that wins validation wins by noise."""

    def __init__(self, texts, y):
        self.signal = {t: (1.0 if c == "b" else -1.0) for t, c in zip(texts, y)}

    def __call__(self, prompts, texts):
        phi = np.stack([text_features(t, 8) for t in texts])
        clean = np.array([self.signal[t] for t in texts]) + 1.5 * phi[:, 0]
        out = np.repeat(clean[None], len(prompts), axis=0)
        for p, prompt in enumerate(prompts):
            if np.any(prompt):
                g = np.random.default_rng(zlib.crc32(prompt.tobytes())).standard_normal(8)
                out[p] += np.sin(50 * phi @ g)
        return np.stack([np.zeros_like(out), out], axis=-1)


def noisy_prompt_task():
    rng = np.random.default_rng(0)
    X = [f"text {i}" for i in range(400)]
    y = np.array(["a", "b"])[rng.integers(0, 2, len(X))]
    return FunctionBackend(NoisyPrompts(X, y), embedding_dim=16), X, y  # 5 x 16 > intrinsic_dim


@pytest.mark.parametrize("method", ["bbt", "ensemble"])
def test_keep_start_reverts_exactly_the_members_within_their_noise(method):
    """At the defaults (calibration=None so that the start is the clean prompt):
    a member reverts to z = 0 iff its validation gain over the start is at most
    one standard error; the others keep the very prompt of the unguarded fit."""
    backend, X, y = noisy_prompt_task()
    reverted_any = kept_any = False
    for seed in range(3):
        kw = dict(method=method, calibration=None, random_state=seed)
        plain = BlackBoxPromptClassifier(backend, method_params={"keep_start": False}, **kw).fit(X[:64], y[:64])
        guarded = BlackBoxPromptClassifier(backend, method_params={"keep_start": True}, **kw).fit(X[:64], y[:64])
        guard = guarded.fit_info_["start_guard"]
        for k, reverted in enumerate(guard["reverted"]):
            assert reverted == (np.any(plain.samples_[k]) and not guard["gain"][k] > guard["se"][k])
            expected = np.zeros_like(plain.samples_[k]) if reverted else plain.samples_[k]
            np.testing.assert_array_equal(guarded.samples_[k], expected)
            reverted_any |= reverted
            kept_any |= bool(np.any(guarded.samples_[k]))
        assert guarded.fit_info_["kept_start"] == [not np.any(z) for z in guarded.samples_]
        assert guarded.n_queries_ == plain.n_queries_  # the start's validation answers were asked anyway
    assert reverted_any and (kept_any or method == "bbt")


def test_keep_start_lowers_test_log_loss_where_no_prompt_beats_the_start():
    """bbt over seeds 0-4 on the noisy-prompt toy: the kept prompt is worse than
    the start in expectation, so reverting it lowers the mean test log loss."""
    backend, X, y = noisy_prompt_task()
    plain, guarded = [], []
    for seed in range(5):
        kw = dict(method="bbt", calibration=None, random_state=seed)
        for params, losses in (({"keep_start": False}, plain), ({"keep_start": True}, guarded)):
            clf = BlackBoxPromptClassifier(backend, method_params=params, **kw).fit(X[:64], y[:64])
            losses.append(log_loss(y[64:], clf.predict_proba(X[64:])))
    assert np.mean(guarded) < np.mean(plain)
    assert sum(g != p for g, p in zip(guarded, plain)) >= 1  # some seed reverted


@pytest.mark.parametrize("method", ["bbt", "ensemble"])
def test_keep_start_keeps_prompts_that_clearly_win(method):
    """On the linear toy the start is at chance and a tuned prompt near perfect:
    the guard reverts nothing, at the defaults, and costs no query."""
    backend, X, y, _ = make_toy_task(n_texts=80, n_features=10, seed=1)  # 5 x 20 > intrinsic_dim
    for seed in range(3):
        kw = dict(method=method, random_state=seed)
        plain = BlackBoxPromptClassifier(backend, method_params={"keep_start": False}, **kw).fit(X, y)
        guarded = BlackBoxPromptClassifier(backend, method_params={"keep_start": True}, **kw).fit(X, y)
        assert not any(guarded.fit_info_["start_guard"]["reverted"])
        np.testing.assert_array_equal(guarded.samples_, plain.samples_)
        assert guarded.n_queries_ == plain.n_queries_


def test_keep_start_needs_a_validation_split():
    backend, X, y = noisy_prompt_task()
    kw = dict(method="bbt", calibration=None, validation_fraction=None, random_state=0)
    plain = BlackBoxPromptClassifier(backend, method_params={"keep_start": False}, **kw).fit(X[:64], y[:64])
    guarded = BlackBoxPromptClassifier(backend, method_params={"keep_start": True}, **kw).fit(X[:64], y[:64])
    assert "start_guard" not in guarded.fit_info_
    np.testing.assert_array_equal(guarded.samples_, plain.samples_)


def test_keep_start_is_bbts_default_only():
    """bbt guards its prompt by default (docs/defaults.md: it lowered log loss over
    seven task x model cells); ensemble does not (it cost 0.4 points there)."""
    backend, X, y = noisy_prompt_task()
    kw = dict(calibration=None, random_state=0)
    bbt = BlackBoxPromptClassifier(backend, method="bbt", **kw).fit(X[:64], y[:64])
    explicit = BlackBoxPromptClassifier(backend, method="bbt", method_params={"keep_start": True}, **kw)
    explicit.fit(X[:64], y[:64])
    assert "start_guard" in bbt.fit_info_
    np.testing.assert_array_equal(bbt.samples_, explicit.samples_)
    ensemble = BlackBoxPromptClassifier(backend, method="ensemble", **kw).fit(X[:64], y[:64])
    assert "start_guard" not in ensemble.fit_info_


def test_a_kept_start_reads_out_as_zero_shot():
    """A bbt fit whose member keeps the start predicts what zero-shot predicts:
    the kept prompt's read-out is fitted (and its family chosen) on every fit
    text in input order, as zero-shot's is. At the defaults, calibration="auto"."""
    backend, X, y = noisy_prompt_task()
    reverted = 0
    for seed in range(4):
        bbt = BlackBoxPromptClassifier(backend, method="bbt", random_state=seed).fit(X[:64], y[:64])
        if np.any(bbt.samples_):
            continue
        reverted += 1
        zero = BlackBoxPromptClassifier(backend, method="zero-shot", random_state=seed).fit(X[:64], y[:64])
        assert bbt.calibration_ == zero.calibration_
        chosen, alone = bbt.fit_info_["calibration"], zero.fit_info_["calibration"]
        for kind, loss in alone["cv_log_loss"].items():  # the same folds: the same held-out losses
            assert chosen["cv_log_loss"][kind] == pytest.approx(loss, rel=1e-9)
        np.testing.assert_allclose(bbt.predict_proba(X[64:]), zero.predict_proba(X[64:]), rtol=0, atol=1e-9)
    assert reverted >= 2

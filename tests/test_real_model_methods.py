"""Every method on the real model and real data, at a small budget.

SmolLM2-135M-Instruct on Rotten Tomatoes (16 fit examples per class, 300
held-out texts, seeds 0, 1, 2), each tuning method given only ``BUDGET``
(prompt, text) queries per fit.

Score-based methods (``bbt``, ``ensemble``, ``vi``) must beat the zero-shot
accuracy of the same model with the same template, on average over the three
seeds. Both sides run without the calibrated read-out (``calibration=None``),
so that this checks the prompt search itself; the read-out's own gain is
checked on BBC News, where the label words' prior bias is large
(``test_calibrated_read_out_lifts_zero_shot_on_bbc_news``). With the default ``prompt_position="tail"`` the untuned prompt *is*
the zero-shot input, so this checks that the search moves somewhere better on
held-out data, not merely that it runs. (``vi`` stays above zero-shot on
seeds 3, 4, 5 too: mean 0.784 vs 0.772 over seeds 0-5.)

Label-only methods (``abc-smc``, ``snpe``) are NOT asserted to beat zero-shot
accuracy, because measurement says they do not, robustly, on this task
(docs/defaults.md, "Label-only methods at a small budget"): over seeds 0-5
at this budget ``abc-smc`` averages 0.765 and ``snpe`` 0.763 against 0.772
for zero-shot, and ``snpe`` at its default 24,288 queries 0.776. Even an
(almost) exact label-only posterior, built from 1,000 prior draws, is no
better than zero-shot on held-out texts here: 24 labels fix a few borderline
training texts and not the test set. What a likelihood-free posterior must
do on real data is what is checked instead: its prompts agree with the
training labels more than prompts drawn from the prior do. ``abc-smc`` does
(0.779 vs 0.742 on the 32 fit texts, mean of the 3 seeds); ``snpe`` does not
yet (0.734): its neural posterior at the true labels stays at the prior,
of whose draws only 0-5 in 1,000 reproduce the labels of the texts whose
label varies (docs/defaults.md). That test is a strict xfail, so that it fails (XPASS) the day SNPE
concentrates and the mark must come off.
"""

from __future__ import annotations

import numpy as np
import pytest

from skprompt import BlackBoxPromptClassifier

pytestmark = pytest.mark.real_model

SEEDS = (0, 1, 2)
BUDGET = 3000
N_TEST = 300


def _accuracy(clf, split):
    proba = clf.predict_proba(split.X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    return np.mean(clf.classes_[proba.argmax(axis=1)] == np.asarray(split.y_test))


@pytest.fixture(scope="module")
def demo_task():
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.models import default_backend

    task = load_task("rotten_tomatoes")
    backend = default_backend(template=task.template, verbalizer=task.verbalizer)
    splits = [few_shot_split(task.texts, task.target, n_per_class=16, n_test=N_TEST, random_state=seed)
              for seed in SEEDS]
    zero_shot = [_accuracy(BlackBoxPromptClassifier(backend, method="zero-shot", calibration=None)
                           .fit(s.X_train, s.y_train), s) for s in splits]
    return backend, splits, float(np.mean(zero_shot))


@pytest.mark.filterwarnings("ignore::skprompt.BudgetWarning")
@pytest.mark.parametrize("method", ["bbt", "ensemble", "vi"])
def test_method_beats_zero_shot_at_a_small_budget(demo_task, method):
    backend, splits, zero_shot_accuracy = demo_task
    budget = BUDGET
    accuracies = []
    for seed, split in zip(SEEDS, splits):
        clf = BlackBoxPromptClassifier(backend, method=method, budget=budget, random_state=seed, calibration=None)
        clf.fit(split.X_train, split.y_train)  # stops on the budget with a BudgetWarning (filtered)
        assert 0 < clf.n_queries_ <= budget
        accuracies.append(_accuracy(clf, split))
    assert np.mean(accuracies) > zero_shot_accuracy, (method, accuracies, zero_shot_accuracy)


def _fit_agreement(clf, Z, split):
    """Per prompt (rows of ``Z``): the share of the fit texts it labels as given."""
    from skprompt._problem import PromptProblem

    problem = PromptProblem(clf.backend_, clf.projection_, clf.classes_, {}, "zero_one", labels_only=True)
    labels = np.asarray(problem.query(clf.projection_(Z), list(split.X_train)))
    y = np.searchsorted(clf.classes_, np.asarray(split.y_train))
    return (labels == y[None, :]).mean(axis=1)


_SNPE_GAP = ("SNPE's neural posterior at the true labels stays at the prior on the real model "
             "(fit-label agreement 0.734 vs 0.742 for prior draws); see docs/algorithms.md, \"Neural posterior estimation\"")
_SNPE_XFAIL = pytest.mark.xfail(strict=True, raises=AssertionError, reason=_SNPE_GAP)


@pytest.mark.filterwarnings("ignore::skprompt.BudgetWarning")
@pytest.mark.parametrize("method", ["abc-smc", pytest.param("snpe", marks=[pytest.mark.sbi, _SNPE_XFAIL])])
def test_label_only_posterior_agrees_with_the_labels_more_than_the_prior(demo_task, method):
    backend, splits, _ = demo_task
    kept, prior = [], []
    for seed, split in zip(SEEDS, splits):
        clf = BlackBoxPromptClassifier(backend, method=method, budget=BUDGET, random_state=seed)
        clf.fit(split.X_train, split.y_train)
        assert clf.labels_only_ and 0 < clf.n_queries_ <= BUDGET
        kept.append(float(clf.weights_ @ _fit_agreement(clf, clf.samples_, split)))
        # the prior of both learners: N(0, sigma0**2 I) (prior_variance left at its default)
        draws = np.random.default_rng(seed).normal(0.0, clf.sigma0, (64, clf.intrinsic_dim))
        prior.append(float(_fit_agreement(clf, draws, split).mean()))
    assert np.mean(kept) > np.mean(prior), (method, kept, prior)


def test_calibrated_read_out_lifts_zero_shot_on_bbc_news():
    """The untuned template with the default read-out against the raw template,
    on BBC News (5 topics), seeds 0 and 1, 16 fit texts per class, 100 test
    texts. Measured on seed 0 with 200 test texts: accuracy 0.545 raw vs 0.805
    with the affine read-out, ECE 0.095 vs 0.054, NLL 0.996 vs 0.566 (the
    small model says " business"/" tech" far more often than the data do)."""
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.evaluation import prediction_metrics
    from skprompt.models import default_backend

    task = load_task("bbc_news")
    backend = default_backend(template=task.template, verbalizer=task.verbalizer)
    raw, cal = [], []
    for seed in (0, 1):
        split = few_shot_split(task.texts, task.target, n_per_class=16, n_test=100, random_state=seed)
        for calibration, out in ((None, raw), ("auto", cal)):
            clf = BlackBoxPromptClassifier(backend, method="zero-shot", calibration=calibration)
            clf.fit(split.X_train, split.y_train)
            assert clf.n_queries_ == (0 if calibration is None else len(split.X_train))
            out.append(prediction_metrics(split.y_test, clf.predict_proba(split.X_test), clf.classes_))
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    assert mean(cal, "accuracy") > mean(raw, "accuracy") + 0.1, (raw, cal)
    assert mean(cal, "log_loss") < mean(raw, "log_loss"), (raw, cal)


def test_top_tokens_read_out_beats_the_affine_one_on_bbc_news():
    """The untuned template on BBC News, seeds 0 and 1 (16 fit texts per
    class, 100 test texts): the top-50 tokens read-out against offsets and a
    temperature. Measured on seeds 0-2 with 300 test texts (32 fit texts per
    class): NLL 0.409 vs 0.531, accuracy 0.858 vs 0.819 (docs/defaults.md)."""
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.evaluation import prediction_metrics
    from skprompt.models import default_backend

    task = load_task("bbc_news")
    backend = default_backend(template=task.template, verbalizer=task.verbalizer)
    rows = {"affine": [], "topk": []}
    for seed in (0, 1):
        split = few_shot_split(task.texts, task.target, n_per_class=16, n_test=100, random_state=seed)
        for calibration, out in rows.items():
            clf = BlackBoxPromptClassifier(backend, method="zero-shot", calibration=calibration)
            clf.fit(split.X_train, split.y_train)
            assert clf.n_queries_ == len(split.X_train)
            out.append(prediction_metrics(split.y_test, clf.predict_proba(split.X_test), clf.classes_))
    assert clf.top_k_ == 50 and len(clf.token_maps_) == 1
    mean = lambda key, name: float(np.mean([r[key] for r in rows[name]]))  # noqa: E731
    assert mean("log_loss", "topk") < mean("log_loss", "affine") - 0.03, rows
    assert mean("accuracy", "topk") > mean("accuracy", "affine") - 0.02, rows

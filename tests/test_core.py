"""Losses, projection, aggregation and the CMA-ES learners on toy problems."""

import numpy as np
import pytest

from skprompt._problem import PromptProblem
from skprompt.inference.base import BudgetExhausted, aggregate_outputs
from skprompt.inference.cmaes import CMAEnsembleLearner
from skprompt.losses import compute_loss
from skprompt.projection import RandomProjection

from toy_tasks import make_toy_task


# --------------------------------------------------------------------- losses
def test_losses_on_a_hand_computed_case():
    p = np.array([[[0.7, 0.3], [0.4, 0.6]]])  # one candidate, two texts
    logp = np.log(p)
    y = np.array([0, 0])
    np.testing.assert_allclose(compute_loss("ce", logp, y), [-(np.log(0.7) + np.log(0.4)) / 2])
    # brier: (0.3^2 + 0.3^2 + 0.6^2 + 0.6^2) / 2
    np.testing.assert_allclose(compute_loss("brier", logp, y), [(0.18 + 0.72) / 2])
    np.testing.assert_allclose(compute_loss("zero_one", logp, y), [0.5])
    # hinge on log-probs, margin 1: text 0 margin log(.7/.3)=0.847 -> 0.153; text 1: log(.4/.6)=-0.405 -> 1.405
    expected = (max(0, 1 - np.log(0.7 / 0.3)) + max(0, 1 - np.log(0.4 / 0.6))) / 2
    np.testing.assert_allclose(compute_loss("hinge", logp, y), [expected])


def test_zero_one_accepts_labels_and_score_losses_refuse_them():
    labels = np.array([[0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(compute_loss("zero_one", labels, [0, 1, 0]), [1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="needs class scores"):
        compute_loss("ce", labels, [0, 1, 0])
    with pytest.raises(ValueError, match="loss must be one of"):
        compute_loss("mse", labels, [0, 1, 0])


# ----------------------------------------------------------------- projection
def test_projection_scale_matches_embedding_statistics():
    proj = RandomProjection(4, 64, 20, embedding_mean=0.5, embedding_std=0.1, sigma0=2.0, random_state=0)
    z = np.random.default_rng(0).standard_normal((500, 20)) * 2.0  # z ~ N(0, sigma0^2)
    prompts = proj(z)
    assert prompts.shape == (500, 4, 64) and prompts.dtype == np.float32
    # centred on the mean embedding, spread like the embeddings
    np.testing.assert_allclose(prompts.mean(), 0.5, atol=0.01)
    np.testing.assert_allclose(prompts.std(), 0.1, rtol=0.1)
    np.testing.assert_allclose(proj(np.zeros((1, 20))), 0.5)


def test_projection_is_seeded():
    a = RandomProjection(2, 8, 3, random_state=1).matrix
    np.testing.assert_array_equal(a, RandomProjection(2, 8, 3, random_state=1).matrix)
    assert not np.array_equal(a, RandomProjection(2, 8, 3, random_state=2).matrix)
    with pytest.raises(ValueError, match="3 columns"):
        RandomProjection(2, 8, 3)(np.zeros((1, 4)))


def test_projection_without_prompt_tokens():
    assert RandomProjection(0, 8, 0)(np.zeros((1, 0))).shape == (1, 0, 8)


def test_a_prompt_is_the_same_bytes_alone_or_in_a_population():
    # The backends' caches key a prompt by its bytes: a generation's best, scored
    # inside its population, must map to the same bytes when predicted alone.
    proj = RandomProjection(5, 576, 500, embedding_mean=0.1, random_state=0)
    Z = np.random.default_rng(0).standard_normal((20, 500))
    batch = proj(Z)
    assert all(np.array_equal(batch[i], proj(Z[i:i + 1])[0]) for i in range(len(Z)))
    assert all(np.array_equal(batch[i], proj(Z[i:i + 3])[0]) for i in range(len(Z) - 3))


def test_predicting_the_fitted_texts_asks_the_model_nothing_new():
    from skprompt import BlackBoxPromptClassifier

    backend, texts, y, _ = make_toy_task(n_texts=40, seed=3)
    for seed in range(3):
        clf = BlackBoxPromptClassifier(backend, method="bbt", intrinsic_dim=20, max_iter=4,
                                       random_state=seed).fit(texts, y)
        assert not all(clf.fit_info_["kept_start"])  # a generation's best is kept, not z = 0
        before = backend.stats["pairs"]
        clf.predict_proba(texts)
        assert backend.stats["pairs"] == before


# ---------------------------------------------------------------- aggregation
def test_aggregate_scores_is_weighted_mean_of_probabilities():
    p1 = np.array([[0.9, 0.1], [0.2, 0.8]])
    p2 = np.array([[0.5, 0.5], [0.6, 0.4]])
    out = aggregate_outputs(np.log(np.stack([p1, p2])), np.array([3.0, 1.0]), 2)
    np.testing.assert_allclose(out, 0.75 * p1 + 0.25 * p2)


def test_aggregate_votes_with_and_without_prior():
    votes = np.array([[0, 1], [0, 0], [0, 1], [1, 1]])  # 4 prompts x 2 texts: text 0 gets 0,0,0,1; text 1 gets 1,0,1,1
    w = np.full(4, 0.25)
    np.testing.assert_allclose(aggregate_outputs(votes, w, 3), [[0.75, 0.25, 0], [0.25, 0.75, 0]])
    smoothed = aggregate_outputs(votes, w, 3, vote_prior=1.0)
    # pseudo-count 1/4 per class: (0.75 + .25) / (1 + .75)
    np.testing.assert_allclose(smoothed[0], np.array([1.0, 0.5, 0.25]) / 1.75)
    assert np.all(smoothed > 0)


# ------------------------------------------------------------- CMA learners
def _problem(n_texts=200, n_classes=2, seed=0, budget=None, val=True):
    backend, X, y, model = make_toy_task(n_texts=n_texts, n_classes=n_classes, seed=seed)
    classes = np.unique(y)
    y_idx = np.searchsorted(classes, y)
    proj = RandomProjection(1, model.embedding_dim, model.embedding_dim, random_state=seed)
    half = n_texts // 2
    splits = {"train": (X[:half], y_idx[:half])}
    if val:
        splits["val"] = (X[half:], y_idx[half:])
    return PromptProblem(backend, proj, classes, splits, "ce", False, budget=budget), model


@pytest.mark.parametrize("n_members", [1, 3])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_cma_learners_reach_high_accuracy_from_chance(n_members, n_classes):
    problem, _ = _problem(n_classes=n_classes, seed=n_classes)
    start_error = compute_loss("zero_one", problem.outputs(np.zeros((1, problem.dim)), "val"), problem.y("val"))
    assert start_error[0] > 0.3  # the untuned model is at chance level
    result = CMAEnsembleLearner(n_members, popsize=10, max_iter=60, sigma0=1.0).fit(problem, 0)
    proba = aggregate_outputs(problem.outputs(result.samples, "val"), result.weights, problem.n_classes)
    accuracy = np.mean(proba.argmax(1) == problem.y("val"))
    assert accuracy >= 0.95
    assert result.samples.shape == (n_members, problem.dim)
    assert result.history.shape == (result.n_iter, n_members)


def test_members_are_independent_runs():
    problem, _ = _problem()
    result = CMAEnsembleLearner(3, popsize=6, max_iter=10, sigma0=1.0).fit(problem, 0)
    assert len({tuple(s) for s in result.samples}) == 3
    assert not np.allclose(result.history[:, 0], result.history[:, 1])


def test_kept_prompt_is_the_best_on_validation():
    problem, _ = _problem(n_texts=60)
    result = CMAEnsembleLearner(1, popsize=6, max_iter=12, sigma0=1.0).fit(problem, 0)
    kept_val = problem.loss(result.samples, "val")[0]
    assert kept_val == pytest.approx(result.info["selection_losses"][0])
    # the kept prompt's validation loss is no worse than that of the final CMA-ES mean
    assert kept_val <= problem.loss(np.zeros((1, problem.dim)), "val")[0]


def test_problem_refuses_requests_beyond_budget_before_querying():
    problem, model = _problem(n_texts=20, budget=25)
    model.calls.clear()
    problem.outputs(np.zeros((2, problem.dim)), "train")  # 2 x 10 = 20 queries
    with pytest.raises(BudgetExhausted):
        problem.outputs(np.zeros((1, problem.dim)), "train")  # 10 more would exceed 25
    assert problem.queries == 20
    assert len(model.calls) == 1


def test_learner_honours_budget():
    problem, _ = _problem(n_texts=40, budget=5000)
    result = CMAEnsembleLearner(2, popsize=6, max_iter=100, sigma0=1.0).fit(problem, 0)
    assert result.budget_exhausted
    assert problem.queries <= 5000
    assert problem.queries + 2 * 6 * 20 + 2 * 20 > 5000  # it stopped only when the next step did not fit


def test_projection_with_an_initial_prompt():
    init = np.arange(6, dtype=np.float32).reshape(2, 3)
    proj = RandomProjection(2, 3, 4, embedding_mean=init, random_state=0)
    np.testing.assert_array_equal(proj(np.zeros((1, 4)))[0], init)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        RandomProjection(2, 3, 4, embedding_mean=np.zeros((3, 3)))


def test_aggregate_votes_through_error_channels():
    votes = np.array([[0, 1], [0, 0]])  # 2 prompts x 2 texts, 3 classes
    out = aggregate_outputs(votes, np.array([0.5, 0.5]), 3, error_rates=np.array([0.2, 0.4]))
    # text 0: both vote 0 -> p0 = .5*.8 + .5*.6 = .7, others .5*.1 + .5*.2 = .15 each
    np.testing.assert_allclose(out[0], [0.7, 0.15, 0.15])
    # text 1: prompt 1 votes 1 (.8 there, .1 elsewhere), prompt 2 votes 0 (.6 there, .2 elsewhere)
    np.testing.assert_allclose(out[1], [0.5 * 0.1 + 0.5 * 0.6, 0.5 * 0.8 + 0.5 * 0.2, 0.5 * 0.1 + 0.5 * 0.2])


def test_aggregation_of_a_class_no_prompt_scores_is_zero_not_nan():
    from skprompt.inference.base import aggregate_outputs

    out = aggregate_outputs(np.array([[[0.0, -np.inf]], [[np.log(0.5), np.log(0.5)]]]), np.ones(2), 2)
    np.testing.assert_allclose(out, [[0.75, 0.25]])
    np.testing.assert_array_equal(aggregate_outputs(np.array([[[0.0, -np.inf]]]), np.ones(1), 2), [[1.0, 0.0]])

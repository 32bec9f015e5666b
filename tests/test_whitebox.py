"""The white-box reference: GradientPromptClassifier and the backends'
differentiable scoring path, on tiny random models (fast).

The differentiable log-probabilities are checked against ``backend.score``
(itself checked against a naive full forward in test_backends_hf.py) and
their gradients against finite differences; the estimator is checked for
what gradient descent must do (lower the training loss), for its model
selection and query accounting (observed through a spy on the backend), for
refusing black-box backends before any call, and for the sklearn contract.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CAUSAL_TEMPLATE, TEXTS, VERBALIZER  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from skprompt import BlackBoxPromptClassifier  # noqa: E402
from skprompt.backends import BackendError, CausalLMBackend, FunctionBackend, MaskedLMBackend  # noqa: E402
from skprompt.losses import compute_loss  # noqa: E402
from skprompt.whitebox import GRADIENT_LOSSES, GradientPromptClassifier, _torch_loss  # noqa: E402

CLASSES = ["fresh", "rotten"]
MASKED_WORDS = {"fresh": "great", "rotten": "terrible"}

# A small task whose labels depend on the text (words of the tokenizer's corpus).
POS = ["a great and moving film", "wonderful acting and lovely music", "a delight, funny and warm",
       "an instant classic", "clever and fun", "the best of the year", "I loved every minute",
       "quite fun and good"]
NEG = ["a terrible boring mess", "the plot is dull", "the jokes are flat", "a waste of time",
       "the ending is awful", "utterly pointless", "overlong and bored", "no story at all"]
X_TASK = POS + NEG
Y_TASK = np.array(["fresh"] * len(POS) + ["rotten"] * len(NEG))


def random_prompts(backend, n_prompts, n_tokens, seed=0):
    rng = np.random.default_rng(seed)
    mean, std = backend.embedding_stats()
    return (mean + std * rng.standard_normal((n_prompts, n_tokens, backend.embedding_dim))).astype(np.float32)


def causal(path, position="suffix", **kw):
    kw.setdefault("cache_size", 0)
    return CausalLMBackend(path, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, prompt_position=position, **kw)


@pytest.fixture(params=["suffix", "tail", "prefix", "bert", "roberta"])
def any_backend(request):
    """Every layout: the causal LM's three prompt positions and two masked LMs.
    batch_size=3: several micro-batches, texts of different lengths in one."""
    return make_backend(request.param, request, cache_size=0, batch_size=3)


def make_backend(which, request, **kw):
    if which in ("bert", "roberta"):
        return MaskedLMBackend(request.getfixturevalue(f"tiny_{which}_dir"), verbalizer=MASKED_WORDS, **kw)
    return causal(request.getfixturevalue("tiny_llama_dir"), which, **kw)


class Spy:
    """Records every call of a backend's differentiable scoring path."""

    def __init__(self, backend, monkeypatch):
        self.calls = []
        real = backend._log_proba_torch

        def spy(prompts, texts, classes):
            self.calls.append({"prompt": prompts.detach().cpu().numpy().copy(), "texts": list(texts),
                               "grad": torch.is_grad_enabled() and prompts.requires_grad})
            return real(prompts, texts, classes)

        monkeypatch.setattr(backend, "_log_proba_torch", spy)


# ------------------------------------------------ differentiable scoring path
def test_differentiable_log_proba_equals_score(any_backend):
    backend = any_backend
    texts = TEXTS + TEXTS[:1]  # a duplicate text too
    prompts = random_prompts(backend, 3, 4, seed=1)
    expected = backend.score(prompts, texts, CLASSES)
    # the comparison must not be vacuous: scores depend on prompt and text
    assert np.exp(expected[..., 0]).std() > 0.02
    t = torch.tensor(prompts, requires_grad=True)
    got = backend._log_proba_torch(t, texts, CLASSES)
    assert got.shape == (3, len(texts), 2) and got.requires_grad
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=1e-5)
    # gradients reach every prompt vector, finite and non-zero (autograd.grad:
    # the shared model's parameters get no .grad)
    (grad,) = torch.autograd.grad(got[..., 0].sum(), t)
    grad = grad.numpy()
    assert np.all(np.isfinite(grad))
    assert np.all(np.abs(grad).sum(axis=2) > 0)


def test_differentiable_path_reuses_cached_text_heads(tiny_llama_dir):
    # A text cache filled by score() (under inference mode) serves the
    # gradient path; only the suffix runs with grad.
    backend = causal(tiny_llama_dir)
    prompts = random_prompts(backend, 2, 3, seed=2)
    backend.score(prompts, TEXTS, CLASSES)
    before = backend.text_cache_info()
    t = torch.tensor(prompts, requires_grad=True)
    (grad,) = torch.autograd.grad(backend._log_proba_torch(t, TEXTS, CLASSES)[..., 0].sum(), t)
    after = backend.text_cache_info()
    assert after["head_forwards"] == before["head_forwards"]
    assert after["hits"] - before["hits"] == len(TEXTS)
    assert np.abs(grad.numpy()).sum() > 0


@pytest.mark.parametrize("which", ["suffix", "prefix", "bert"])
def test_gradient_matches_finite_differences(which, request):
    # A float64 copy of the tiny model, and a directional central difference.
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if which == "bert":
        path = request.getfixturevalue("tiny_bert_dir")
        model = AutoModelForMaskedLM.from_pretrained(path).double()
        backend = MaskedLMBackend(model, request.getfixturevalue("bert_tokenizer"), verbalizer=MASKED_WORDS,
                                  cache_size=0)
    else:
        model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue("tiny_llama_dir")).double()
        backend = CausalLMBackend(model, request.getfixturevalue("causal_tokenizer"), template=CAUSAL_TEMPLATE,
                                  verbalizer=VERBALIZER, prompt_position=which, cache_size=0)
    rng = np.random.default_rng(0)
    prompt = torch.tensor(random_prompts(backend, 1, 2, seed=3), dtype=torch.float64, requires_grad=True)
    weights = torch.tensor(rng.standard_normal((1, len(TEXTS), 2)))

    def f(p):
        return (backend._log_proba_torch(p, TEXTS, CLASSES) * weights).sum()

    (grad,) = torch.autograd.grad(f(prompt), prompt)
    for _ in range(2):  # two random directions
        direction = torch.tensor(rng.standard_normal(prompt.shape))
        direction /= direction.norm()
        analytic = float((grad * direction).sum())
        eps = 1e-3
        with torch.no_grad():
            numeric = float(f(prompt + eps * direction) - f(prompt - eps * direction)) / (2 * eps)
        assert abs(analytic) > 1e-2  # not a vacuous comparison
        # the readout rounds logits to float32 (as score() does): tolerance to match
        assert abs(analytic - numeric) <= 1e-3 * max(1.0, abs(analytic)), (analytic, numeric)


def test_torch_losses_equal_numpy_losses():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((9, 3)) * 2
    log_proba = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    y = rng.integers(0, 3, size=9)
    for name in GRADIENT_LOSSES:
        got = float(_torch_loss(name, torch.tensor(log_proba), torch.tensor(y)))
        np.testing.assert_allclose(got, compute_loss(name, log_proba[None], y)[0], rtol=1e-12)


# --------------------------------------------------------------- fitting
@pytest.mark.parametrize("which, ratio", [("prefix", 0.3), ("tail", 0.3), ("bert", 0.3), ("suffix", 0.75)])
def test_fit_lowers_training_loss_and_raises_accuracy(which, ratio, request):
    # On this task the tiny random models are poor with the initial prompt;
    # 12 full-batch Adam steps must cut the training loss and fit the texts.
    # (The "suffix" layout, where the template's tail follows the prompt,
    # learns slowest on the tiny model.)
    backend = make_backend(which, request)
    params = dict(n_prompt_tokens=2, validation_fraction=None, random_state=0)
    clf = GradientPromptClassifier(backend, learning_rate=0.1, max_iter=12, **params).fit(X_TASK, Y_TASK)
    history = clf.history_[:, 0]
    assert clf.history_.shape == (12, 1) and clf.n_iter_ == 12
    assert history[0] > 0.5  # the initial prompt is poor on this task
    assert history.min() < ratio * history[0]
    start = GradientPromptClassifier(backend, learning_rate=1e-12, max_iter=1, **params).fit(X_TASK, Y_TASK)
    assert clf.score(X_TASK, Y_TASK) >= start.score(X_TASK, Y_TASK) + 0.15
    assert clf.score(X_TASK, Y_TASK) >= (0.65 if which == "suffix" else 0.85)


def test_kept_prompt_is_best_validation_and_queries_are_counted(tiny_llama_dir, monkeypatch):
    backend = causal(tiny_llama_dir, batch_size=5)
    spy = Spy(backend, monkeypatch)
    clf = GradientPromptClassifier(backend, n_prompt_tokens=2, learning_rate=0.3, max_iter=12, batch_size=6,
                                   validation_fraction=0.25, random_state=1).fit(X_TASK, Y_TASK)
    train_calls = [c for c in spy.calls if c["grad"]]
    val_calls = [c for c in spy.calls if not c["grad"]]
    # n_queries_: every (prompt, text) pair sent, forward+backward counted once
    assert clf.n_queries_ == sum(len(c["texts"]) for c in spy.calls)
    # the validation set: 4 of the 16 texts, stratified, disjoint from training
    val_texts = val_calls[0]["texts"]
    assert len(val_texts) == 4 and sorted(Y_TASK[[X_TASK.index(t) for t in val_texts]]) == ["fresh"] * 2 + ["rotten"] * 2
    assert not set(val_texts) & {t for c in train_calls for t in c["texts"]}
    # mini-batches of 6 training texts per step (micro-batches of 5 then 1)
    assert sum(len(c["texts"]) for c in train_calls) == 6 * 12
    assert clf.n_queries_ == 6 * 12 + 4 * 13
    # the validation loss of every evaluated prompt, recomputed with score()
    y_val = np.searchsorted(clf.classes_, Y_TASK[[X_TASK.index(t) for t in val_texts]])
    evaluated = [c["prompt"] for c in val_calls]
    losses = [compute_loss("ce", backend.score(p, val_texts, CLASSES), y_val)[0] for p in evaluated]
    np.testing.assert_allclose(clf.validation_history_, losses, atol=1e-5)
    assert clf.validation_history_.shape == (13,)
    best = int(np.argmin(losses))
    assert len(set(np.round(losses, 6))) > 3  # the prompts really differ
    assert clf.best_iter_ == best
    np.testing.assert_array_equal(clf.prompt_embeddings_, evaluated[best])
    assert clf.prompt_embeddings_.dtype == np.float32 and clf.prompt_embeddings_.shape == (1, 2, 32)


def test_training_loss_selection_full_batch(tiny_llama_dir, monkeypatch):
    backend = causal(tiny_llama_dir, "prefix")
    spy = Spy(backend, monkeypatch)
    # a large step size so that the loss does not fall monotonically
    clf = GradientPromptClassifier(backend, n_prompt_tokens=2, learning_rate=2.0, max_iter=8,
                                   validation_fraction=None, random_state=0).fit(X_TASK, Y_TASK)
    assert clf.validation_history_ is None
    losses = list(clf.history_[:, 0])
    final = spy.calls[-1]
    assert not final["grad"] and final["texts"] == X_TASK  # the final prompt's training loss
    losses.append(compute_loss("ce", backend.score(final["prompt"], X_TASK, CLASSES),
                               np.searchsorted(clf.classes_, Y_TASK))[0])
    assert clf.best_iter_ == int(np.argmin(losses))
    kept = spy.calls[clf.best_iter_]["prompt"]
    np.testing.assert_array_equal(clf.prompt_embeddings_, kept)
    assert clf.n_queries_ == len(X_TASK) * 9


def test_predictions_use_score(tiny_llama_dir):
    backend = causal(tiny_llama_dir)
    clf = GradientPromptClassifier(backend, n_prompt_tokens=2, max_iter=3, random_state=0).fit(X_TASK, Y_TASK)
    before = backend.text_cache_info()
    proba = clf.predict_proba(TEXTS)
    # predictions stream the new texts: the fit's text cache is left as it was
    assert backend.text_cache_info()["entries"] == before["entries"]
    scores = backend.score(clf.prompt_embeddings_, TEXTS, CLASSES)[0]
    # streaming scores one prompt by a full forward: equal up to float32 rounding
    np.testing.assert_allclose(proba, np.exp(scores), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(TEXTS), clf.classes_[proba.argmax(axis=1)])
    # (score() above filled the result cache, which now answers predict_proba: same up to float32 rounding)
    np.testing.assert_allclose(clf.predict_log_proba(TEXTS), np.log(proba), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.decision_function(TEXTS), np.log(proba[:, 1]) - np.log(proba[:, 0]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.weights_, [1.0])
    assert clf.labels_only_ is False


def test_verbose_logs_one_line_per_step(tiny_llama_dir, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="skprompt"):
        GradientPromptClassifier(causal(tiny_llama_dir), n_prompt_tokens=2, max_iter=3, verbose=1,
                                 random_state=0).fit(X_TASK, Y_TASK)
    steps = [r.getMessage() for r in caplog.records if r.name == "skprompt"]
    assert [m.split(":")[0] for m in steps] == ["gradient step 1/3", "gradient step 2/3", "gradient step 3/3"]
    assert all("train_loss=" in m and "queries" in m for m in steps)


def test_tail_layout_starts_from_the_template(tiny_llama_dir):
    # With prompt_position="tail" the initial prompt is the template's own
    # tail embeddings (no noise): before any step the model is zero-shot.
    backend = causal(tiny_llama_dir, "tail")
    clf = GradientPromptClassifier(backend, n_prompt_tokens=2, max_iter=1, learning_rate=1e-12,
                                   validation_fraction=None, random_state=0).fit(X_TASK, Y_TASK)
    np.testing.assert_allclose(clf.prompt_embeddings_[0], backend.initial_prompt(2), atol=1e-9)
    zero_shot = backend.score(np.zeros((1, 0, 32), np.float32), X_TASK, CLASSES)
    np.testing.assert_allclose(clf.predict_proba(X_TASK), np.exp(zero_shot[0]), atol=1e-5)


def test_restricted_white_box_searches_the_black_box_subspace(tiny_llama_dir, monkeypatch):
    """intrinsic_dim: the same projection, start and validation split as the
    black-box estimator with the same random_state; every prompt it tries
    lies in that subspace, and gradient steps in z lower the training loss."""
    backend = causal(tiny_llama_dir, "tail")
    params = dict(n_prompt_tokens=2, intrinsic_dim=8, random_state=3)
    black = BlackBoxPromptClassifier(backend, method="bbt", max_iter=1, popsize=4, calibration=None,
                                     **params).fit(X_TASK, Y_TASK)
    spy = Spy(backend, monkeypatch)
    white = GradientPromptClassifier(backend, learning_rate=0.5, max_iter=10, **params).fit(X_TASK, Y_TASK)
    np.testing.assert_array_equal(white.projection_.matrix, black.projection_.matrix)
    np.testing.assert_array_equal(white.projection_.offset, black.projection_.offset)
    # the start is z = 0, the untuned template; the validation texts are the black box's
    np.testing.assert_allclose(spy.calls[0]["prompt"][0], black.projection_(np.zeros((1, 8)))[0], atol=1e-6)
    val_texts = spy.calls[0]["texts"]
    assert len(val_texts) == 4 and not spy.calls[0]["grad"]
    basis = black.projection_.matrix.astype(np.float64)
    for call in spy.calls:  # every prompt is offset + A z for some z
        flat = call["prompt"][0].reshape(-1).astype(np.float64) - black.projection_.offset
        z = np.linalg.lstsq(basis, flat, rcond=None)[0]
        np.testing.assert_allclose(basis @ z, flat, atol=1e-4)
    np.testing.assert_array_equal(white.prompt_embeddings_, white.projection_(white.z_[None]))
    assert white.history_[:, 0].min() < 0.8 * white.history_[0, 0]
    full = GradientPromptClassifier(backend, n_prompt_tokens=2, max_iter=1, random_state=3).fit(X_TASK, Y_TASK)
    assert full.projection_ is None and full.z_ is None


def test_multiclass_and_other_losses(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, cache_size=0)  # labels as words
    X = X_TASK + ["It was fine.", "Not bad.", "Quite fun.", "It was good."]
    y = ["positive"] * 8 + ["negative"] * 8 + ["great"] * 4
    for loss in ("hinge", "brier"):
        clf = GradientPromptClassifier(backend, n_prompt_tokens=2, max_iter=4, learning_rate=0.1, loss=loss,
                                       validation_fraction=None, random_state=0).fit(X, y)
        assert clf.predict_proba(X).shape == (len(X), 3)
        assert clf.decision_function(X).shape == (len(X), 3)
        assert clf.history_[:, 0].min() < clf.history_[0, 0]


def test_model_is_left_as_it_was(tiny_llama_dir):
    backend = causal(tiny_llama_dir)
    model = backend.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # an unusual state that fit must restore: one frozen layer, one in train mode
    first = next(iter(model.parameters()))
    first.requires_grad_(False)
    flags[next(iter(model.state_dict()))] = False
    model.model.layers[0].train()
    modes = {n: m.training for n, m in model.named_modules()}
    rng_state = torch.random.get_rng_state()
    model.zero_grad(set_to_none=True)
    try:
        GradientPromptClassifier(backend, n_prompt_tokens=2, max_iter=3, learning_rate=0.5,
                                 random_state=0).fit(X_TASK, Y_TASK)
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert all(p.grad is None for p in model.parameters())
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert torch.equal(torch.random.get_rng_state(), rng_state)
    finally:
        first.requires_grad_(True)
        model.eval()


# --------------------------------------------------------------- refusals
def test_refuses_function_and_label_only_backends_before_any_call(tiny_llama_dir):
    calls = []

    def fn(prompts, texts):
        calls.append(len(texts))
        return np.zeros((len(prompts), len(texts), 2))

    for backend in (FunctionBackend(fn, embedding_dim=4), FunctionBackend(fn, embedding_dim=4, labels_only=True)):
        with pytest.raises((TypeError, ValueError), match="full access .* local transformers model"):
            GradientPromptClassifier(backend).fit(X_TASK, Y_TASK)
    assert calls == []
    with pytest.raises(TypeError, match="CausalLMBackend, MaskedLMBackend or None; got str"):
        GradientPromptClassifier("a model").fit(X_TASK, Y_TASK)

    class LabelOnlyLM(CausalLMBackend):
        labels_only = True

    label_only = LabelOnlyLM(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    with pytest.raises(ValueError, match="label-only"):
        GradientPromptClassifier(label_only).fit(X_TASK, Y_TASK)
    assert label_only.stats["requests"] == 0 and label_only.text_cache_info()["forwards"] == 0


@pytest.mark.parametrize("param, value", [
    ("n_prompt_tokens", 0), ("learning_rate", 0.0), ("learning_rate", float("nan")), ("max_iter", 0),
    ("batch_size", 0), ("loss", "zero_one"), ("validation_fraction", 1.0), ("verbose", -1),
    ("intrinsic_dim", 0),
])
def test_bad_parameters_are_refused_before_any_call(tiny_llama_dir, param, value):
    backend = causal(tiny_llama_dir)
    with pytest.raises(ValueError, match=param):
        GradientPromptClassifier(backend, **{param: value}).fit(X_TASK, Y_TASK)
    assert backend.text_cache_info()["forwards"] == 0 and backend.text_cache_info()["head_forwards"] == 0


def test_bad_data_is_refused(tiny_llama_dir):
    backend = causal(tiny_llama_dir)
    with pytest.raises(ValueError, match="single class"):
        GradientPromptClassifier(backend).fit(X_TASK, ["fresh"] * len(X_TASK))
    with pytest.raises(TypeError, match="sequence of str"):
        GradientPromptClassifier(backend).fit("one text", ["fresh"])
    with pytest.raises(BackendError, match="verbalizer"):
        GradientPromptClassifier(backend).fit(X_TASK, ["a"] * 8 + ["b"] * 8)


def test_differentiable_path_validates_its_input(tiny_llama_dir):
    backend = causal(tiny_llama_dir)
    with pytest.raises(BackendError, match="torch.Tensor"):
        backend._log_proba_torch(np.zeros((1, 2, 32)), TEXTS, CLASSES)
    with pytest.raises(BackendError, match="shape"):
        backend._log_proba_torch(torch.zeros(1, 2, 7), TEXTS, CLASSES)


# -------------------------------------------------------------- sklearn glue
@pytest.fixture(scope="module")
def fitted(tiny_llama_dir):
    backend = causal(tiny_llama_dir)
    clf = GradientPromptClassifier(backend, n_prompt_tokens=2, max_iter=4, learning_rate=0.1,
                                   random_state=0).fit(X_TASK, Y_TASK)
    return backend, clf


def test_clone_and_params(fitted):
    backend, clf = fitted
    cl = clone(clf)
    # the backend is rebuilt from its arguments and shares the loaded weights
    assert cl.backend is not backend and cl.backend.model is backend.model
    assert cl.backend.get_params() == backend.get_params()
    assert {k: v for k, v in cl.get_params().items() if k != "backend"} == \
        {k: v for k, v in clf.get_params().items() if k != "backend"}
    assert not [k for k in vars(cl) if k.endswith("_") and not k.startswith("_")]
    with pytest.raises(NotFittedError):
        cl.predict(TEXTS)
    other = GradientPromptClassifier().set_params(**clf.get_params(deep=False))
    assert other.get_params(deep=False) == clf.get_params(deep=False)
    other.set_params(max_iter=7, loss="brier")
    assert other.max_iter == 7 and other.loss == "brier"
    # the benchmark's call
    GradientPromptClassifier(backend, random_state=0, validation_fraction=0.5, **{"max_iter": 15})
    assert clf.__sklearn_tags__().input_tags.string
    assert clf.__sklearn_tags__().input_tags.string == BlackBoxPromptClassifier().__sklearn_tags__().input_tags.string


def test_pickle_round_trip_keeps_predictions(fitted):
    _, clf = fitted
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(TEXTS), clf.predict_proba(TEXTS))
    np.testing.assert_array_equal(restored.prompt_embeddings_, clf.prompt_embeddings_)


def test_deterministic_under_random_state(fitted):
    backend, clf = fitted
    again = clone(clf).fit(X_TASK, Y_TASK)
    np.testing.assert_array_equal(again.prompt_embeddings_, clf.prompt_embeddings_)
    np.testing.assert_array_equal(again.history_, clf.history_)
    other = clone(clf).set_params(random_state=1).fit(X_TASK, Y_TASK)
    assert not np.array_equal(other.prompt_embeddings_, clf.prompt_embeddings_)


def test_int_labels_give_same_model_as_str_labels(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer={0: "positive", 1: "negative"},
                              prompt_position="suffix", cache_size=0)
    y_int = (Y_TASK == "rotten").astype(int)
    a = GradientPromptClassifier(backend, n_prompt_tokens=2, max_iter=3, random_state=0).fit(X_TASK, y_int)
    b = GradientPromptClassifier(causal(tiny_llama_dir), n_prompt_tokens=2, max_iter=3,
                                 random_state=0).fit(X_TASK, Y_TASK)
    np.testing.assert_array_equal(a.classes_, [0, 1])
    assert a.predict(TEXTS).dtype.kind == "i"
    np.testing.assert_array_equal(a.prompt_embeddings_, b.prompt_embeddings_)
    np.testing.assert_array_equal(a.predict(TEXTS), (b.predict(TEXTS) == "rotten").astype(int))


# -------------------------------------------------------------- real model
@pytest.mark.real_model
def test_smollm2_rotten_tomatoes_gradient_tuning_fits_the_training_set():
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.models import default_backend

    task = load_task("rotten_tomatoes")
    split = few_shot_split(task.texts, task.target, n_per_class=4, n_val_per_class=0, n_test=0, random_state=0)
    backend = default_backend(template=task.template, verbalizer=task.verbalizer)
    texts, y = list(split.X_train), split.y_train
    prompts = random_prompts(backend, 1, 3, seed=0)
    with torch.no_grad():
        log_proba = backend._log_proba_torch(torch.tensor(prompts), texts, sorted(set(y))).numpy()
    np.testing.assert_allclose(log_proba, backend.score(prompts, texts, sorted(set(y))), atol=1e-5)
    clf = GradientPromptClassifier(backend, n_prompt_tokens=3, max_iter=8, learning_rate=0.03,
                                   validation_fraction=None, random_state=0).fit(texts, y)
    history = clf.history_[:, 0]
    assert history.min() < 0.5 * history[0]
    assert clf.score(texts, y) == 1.0

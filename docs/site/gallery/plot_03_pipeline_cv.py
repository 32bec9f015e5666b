"""
In a scikit-learn pipeline, cross-validated
===========================================

:class:`~skprompt.BlackBoxPromptClassifier` is a scikit-learn classifier, so
it composes: here a text normaliser and the classifier form a
:class:`~sklearn.pipeline.Pipeline`, scored by
:func:`~sklearn.model_selection.cross_val_score` and, with skprompt's
calibration scorer, by :func:`~sklearn.model_selection.cross_validate`. The
black box is the toy of :ref:`sphx_glr_auto_examples_plot_01_toy_black_box.py`
(repeated so that the script runs on its own); the raw reviews now come with
capitals and punctuation, which the toy model's vocabulary does not have.
"""

import re

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import FunctionBackend
from skprompt.metrics import get_scorer

rng = np.random.default_rng(0)
POSITIVE = ["great", "moving", "clever", "warm", "funny", "sharp"]
NEGATIVE = ["dull", "slow", "messy", "flat", "silly", "tired"]
NEUTRAL = ["film", "plot", "cast", "script", "music", "ending", "story", "pace"]
sentiment = np.array([1.0, -1.0, 0.5, 0.0])
WORD_VECTORS = {word: sign * sentiment + 0.3 * rng.standard_normal(4)
                for words, sign in ((POSITIVE, 1), (NEGATIVE, -1), (NEUTRAL, 0)) for word in words}
PRETRAINED = np.array([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 0.0, 0.0]])


def toy_model(prompt_embeddings, texts):
    """(n_prompts, n_prompt_tokens, 8) float32 and texts -> (n_prompts, n_texts, 2) scores."""
    x = np.array([np.mean([WORD_VECTORS[w] for w in text.split()], axis=0) for text in texts])
    weights = np.broadcast_to(PRETRAINED, (len(prompt_embeddings), 2, 4))
    if prompt_embeddings.shape[1]:  # no prompt tokens: the untuned model (zero-shot)
        weights = weights + prompt_embeddings[:, 0].reshape(-1, 2, 4)
    return np.einsum("pcd,nd->pnc", weights, x)


def make_reviews(n, seed):
    """``n`` short reviews; the label is the majority sentiment, flipped for one in ten."""
    r = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        k = r.choice([1, 3])
        n_pos = r.binomial(k, 0.5)
        words = [*r.choice(POSITIVE, n_pos), *r.choice(NEGATIVE, k - n_pos), *r.choice(NEUTRAL, 2)]
        fresh = (2 * n_pos > k) != (r.random() < 0.1)
        texts.append(" ".join(r.permutation(words)))
        labels.append("fresh" if fresh else "rotten")
    return texts, np.array(labels)


backend = FunctionBackend(toy_model, embedding_dim=8)
texts, y = make_reviews(96, seed=1)
rng = np.random.default_rng(3)
X = [text.capitalize() + rng.choice(["!", ".", "..."]) for text in texts]  # what users write
print(X[:3])

# %%
# The pipeline
# ------------
# The normaliser is a plain function; the classifier gets the backend, which
# ``clone`` (and so cross-validation) shares rather than copies: a real
# backend holds a model or an API client.


def normalise(texts):
    return [re.sub(r"[^a-z ]", "", text.lower()) for text in texts]


pipeline = make_pipeline(
    FunctionTransformer(normalise),
    BlackBoxPromptClassifier(backend, method="bbt", n_prompt_tokens=1, intrinsic_dim=8,
                             sigma0=0.3, max_iter=10, random_state=0),
)
cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)

# %%
# Cross-validated accuracy
# ------------------------
backend.reset_stats()
scores = cross_val_score(pipeline, X, y, cv=cv, scoring="accuracy")
print("accuracy per fold:", scores.round(3), f"mean {scores.mean():.3f}")
print("model queries for the three fits and their predictions:", backend.stats["pairs"])

# %%
# Accuracy and calibration at once
# --------------------------------
# skprompt's scorers follow scikit-learn's convention (greater is better),
# hence the *negative* expected calibration error; they work in
# ``GridSearchCV`` as well (``skprompt.metrics.get_scorer_names()`` lists them).
results = cross_validate(
    pipeline, X, y, cv=cv,
    scoring={"accuracy": "accuracy", "neg_ece": get_scorer("neg_expected_calibration_error")},
)
print("accuracy:", results["test_accuracy"].round(3))
print("ECE:     ", (-results["test_neg_ece"]).round(3))

"""
Calibration and uncertainty of a prompt distribution
====================================================

Is an ensemble of prompts better calibrated than one prompt, and does its
uncertainty flag the texts it gets wrong? This example fits one Black-Box
Tuning prompt (``"bbt"``), a prompt ensemble (``"ensemble"``) and a
variational posterior over prompts (``"vi"``) on the toy black box of
:ref:`sphx_glr_auto_examples_plot_01_toy_black_box.py` (repeated here so that
the script runs on its own), then draws their reliability diagrams with
scikit-learn's :class:`~sklearn.calibration.CalibrationDisplay` and their
risk-rejection curves.

On a toy this small the three are close; the point is the tools. The
measured comparison on real data is in :doc:`/guide/results`.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import CalibrationDisplay

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import FunctionBackend
from skprompt.metrics import expected_calibration_error, misclassification_auroc, risk_rejection_curve

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
X_train, y_train = make_reviews(64, seed=1)
X_test, y_test = make_reviews(1000, seed=2)

# %%
# Three ways to learn prompts
# ---------------------------
settings = dict(n_prompt_tokens=1, intrinsic_dim=8, sigma0=0.3, max_iter=10, random_state=0)
models = {
    "bbt": BlackBoxPromptClassifier(backend, method="bbt", **settings),
    "ensemble": BlackBoxPromptClassifier(backend, method="ensemble", n_prompts=4, **settings),
    "vi": BlackBoxPromptClassifier(backend, method="vi", n_prompts=8, **settings),
}
probas, uncertainties = {}, {}
for name, clf in models.items():
    clf.fit(X_train, y_train)
    probas[name] = clf.predict_proba(X_test)
    uncertainties[name] = clf.predict_uncertainty(X_test)
    ece = expected_calibration_error(y_test, probas[name], labels=clf.classes_)
    print(f"{name:>8}: accuracy {clf.score(X_test, y_test):.3f}, ECE {ece:.3f}, {len(clf.samples_)} prompt(s)")

# %%
# Reliability diagrams
# --------------------
# The probability of ``"fresh"`` (column 0 of ``classes_``) against the share
# of reviews that are fresh, in 10 bins. A calibrated model lies on the
# diagonal. (:func:`skprompt.metrics.reliability_diagram` draws the top-label
# version of the same plot, for any number of classes.)
fig, ax = plt.subplots(figsize=(5, 5))
for name, proba in probas.items():
    CalibrationDisplay.from_predictions(y_test == "fresh", proba[:, 0], n_bins=10, name=name, ax=ax)
ax.set_xlabel('mean predicted probability of "fresh"')
ax.set_ylabel("share of fresh reviews")
ax.set_title("Reliability on 1000 toy reviews")
fig.tight_layout()

# %%
# Does the uncertainty flag mistakes?
# -----------------------------------
# :meth:`~skprompt.BlackBoxPromptClassifier.predict_uncertainty` splits the
# entropy of the averaged prediction (``total``) into the prompts' own
# uncertainty (``aleatoric``) and their disagreement (``epistemic``, zero for
# one prompt). Ranking the texts by ``total`` and keeping the most confident
# ones, the error rate of what is kept should fall with coverage.
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, proba in probas.items():
    y_pred = models[name].classes_[proba.argmax(axis=1)]
    total = uncertainties[name].total
    coverage, risk = risk_rejection_curve(y_pred != y_test, total, n_bins=20)
    auroc = misclassification_auroc(y_test, y_pred, total)
    ax.plot(coverage, risk, marker=".", label=f"{name} (error AUROC {auroc:.2f})")
ax.set_xlabel("coverage (share of texts kept)")
ax.set_ylabel("error rate of the kept texts")
ax.legend()
fig.tight_layout()

print("mean epistemic uncertainty (nats):",
      {name: round(float(u.epistemic.mean()), 4) for name, u in uncertainties.items()})

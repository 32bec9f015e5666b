"""
Tuning a soft prompt through a black box
========================================

A "language model" that we may only query: it takes soft-prompt vectors and
texts, and answers a score per class. Here it is a toy, a few lines of
numpy, wrapped in :class:`~skprompt.backends.FunctionBackend` exactly as a
client of a remote API would be. Its untuned read-out of a review's words is
off, so its zero-shot answers are at chance; the soft prompt can correct it,
and :class:`~skprompt.BlackBoxPromptClassifier` finds such a prompt by
querying the model, without gradients.
"""

# %%
# The toy black box
# -----------------
# Each word has a fixed vector whose direction ``sentiment`` carries the
# sentiment; a review is the mean of its words' vectors. The model reads
# a class score off that mean through a 2 x 4 matrix: its own
# (``PRETRAINED``, which does not look along ``sentiment``) plus the first
# soft-prompt vector (8 numbers). Column ``k`` of the answer is the score
# of class ``classes_[k]``, here ``"fresh"`` then ``"rotten"``.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import log_loss

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import FunctionBackend

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
X_test, y_test = make_reviews(400, seed=2)
print(X_train[:3], y_train[:3])

# %%
# Zero-shot, one prompt, an ensemble of prompts
# ---------------------------------------------
# ``"zero-shot"`` asks the model without a soft prompt; ``"bbt"`` tunes one
# prompt by CMA-ES in a random ``intrinsic_dim``-dimensional subspace
# (Black-Box Tuning); ``"ensemble"`` keeps ``n_prompts`` independently tuned
# prompts and averages their probabilities. ``budget`` caps the (prompt,
# text) pairs the model scores during ``fit``; ``n_queries_`` is what a fit
# used. A real model needs the defaults (``n_prompt_tokens`` from the
# backend, ``intrinsic_dim=50``); the toy has one 8-number prompt vector.
settings = dict(n_prompt_tokens=1, intrinsic_dim=8, sigma0=0.3, max_iter=10, budget=20_000, random_state=0)
fitted = {}
for method in ["zero-shot", "bbt", "ensemble"]:
    clf = BlackBoxPromptClassifier(backend, method=method, **settings).fit(X_train, y_train)
    proba = clf.predict_proba(X_test)
    fitted[method] = clf
    print(f"{method:>9}: accuracy {clf.score(X_test, y_test):.3f}, "
          f"log loss {log_loss(y_test, proba, labels=clf.classes_):.3f}, "
          f"{clf.n_queries_:>5} fit queries, {len(clf.samples_)} prompt(s)")

# %%
# The search
# ----------
# ``history_`` has, per CMA-ES generation, the best training loss found so
# far by each run (one run for ``"bbt"``, one per ensemble member). With the
# same ``random_state``, the ensemble's first run is the ``"bbt"`` run.
fig, ax = plt.subplots(figsize=(6, 3.5))
for method, style in [("ensemble", dict(color="tab:orange", lw=1.5)),
                      ("bbt", dict(color="black", ls="--", lw=2))]:
    history = fitted[method].history_  # (n_iter_, n_runs)
    generations = np.arange(1, len(history) + 1)
    for run in range(history.shape[1]):
        ax.plot(generations, history[:, run], label=method if run == 0 else "_nolegend_", **style)
ax.set_xlabel("CMA-ES generation")
ax.set_ylabel("best training loss so far")
ax.set_title("Prompt search on the toy black box")
ax.legend()
fig.tight_layout()

# %%
# Predictions
# -----------
# A fitted classifier predicts like any scikit-learn classifier.
ensemble = fitted["ensemble"]
print(ensemble.predict(["great moving film", "dull slow plot"]))
print(ensemble.predict_proba(["great moving film", "dull slow plot"]).round(3))

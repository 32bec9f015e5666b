"""
An API that answers only labels
===============================

Some APIs return the predicted label and nothing else: no scores, no
probabilities. A prompt search then has no loss to follow except the error
rate, and one prompt's predictions are hard labels without any confidence.
skprompt's likelihood-free methods learn a *posterior* over prompts from the
labels alone; ``"abc-smc"`` (approximate Bayesian computation, sequential
Monte Carlo) keeps a weighted population of prompts, and the classifier
predicts with their smoothed, weighted vote.

The "API" is the toy black box of
:ref:`sphx_glr_auto_examples_plot_01_toy_black_box.py` (repeated so that the
script runs on its own), answering the index of its top class.
"""

import matplotlib.pyplot as plt
import numpy as np

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


def label_only_api(prompt_embeddings, texts):
    """(n_prompts, n_prompt_tokens, 8) float32 and texts -> (n_prompts, n_texts) class indices."""
    return toy_model(prompt_embeddings, texts).argmax(axis=-1)


api = FunctionBackend(label_only_api, embedding_dim=8, labels_only=True)
X_train, y_train = make_reviews(64, seed=1)
X_test, y_test = make_reviews(400, seed=2)

# %%
# Zero-shot and ABC-SMC on labels only
# ------------------------------------
# ``budget`` caps the (prompt, text) pairs asked for; ``method_params`` holds
# the method's own options (here at most 6 rounds of the sampler).
settings = dict(n_prompt_tokens=1, intrinsic_dim=8, sigma0=0.3, budget=60_000, random_state=0)
# zero-shot holds out no validation texts, so its votes are smoothed by a pseudo-count
zero_shot = BlackBoxPromptClassifier(api, method="zero-shot", vote_smoothing=1.0, **settings).fit(X_train, y_train)
abc = BlackBoxPromptClassifier(api, method="abc-smc", n_prompts=24, method_params={"max_rounds": 6},
                               **settings).fit(X_train, y_train)
for name, clf in [("zero-shot", zero_shot), ("abc-smc", abc)]:
    print(f"{name:>9}: accuracy {clf.score(X_test, y_test):.3f}, {clf.n_queries_} fit queries, "
          f"{len(clf.samples_)} prompt(s)")
print("stopped because:", abc.fit_info_["stop_reason"])

# %%
# The posterior's rounds and its vote
# -----------------------------------
# ``history_`` has the lowest training error rate of each round's
# population. A text on which the kept prompts split their votes gets a
# probability away from 0 and 1, and a non-zero vote entropy
# (``predict_uncertainty(X).total``).
proba = abc.predict_proba(X_test)
votes = abc.predict_uncertainty(X_test).total
print(f"texts with split votes: {np.mean(votes > 0):.0%}")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.5))
ax0.plot(np.arange(1, len(abc.history_) + 1), abc.history_.min(axis=1), marker="o")
ax0.set_xlabel("ABC-SMC round")
ax0.set_ylabel("lowest training error rate")
ax1.hist(proba[:, 0], bins=20, range=(0, 1))
ax1.set_xlabel('predicted probability of "fresh"')
ax1.set_ylabel("test texts")
fig.tight_layout()

"""Toy black boxes with a known optimum, for fast learner and estimator tests.

Each text has a fixed feature vector phi(text) in R^m (seeded by a hash of the
text). The "model" reads the first soft-prompt vector as a C x m weight matrix
W and answers the class scores ``scale * W phi``. The labels come from a hidden
W*, so the prompt W = W* classifies perfectly, while the model without a
prompt (or with a random one) is at chance.
"""

import zlib

import numpy as np

from skprompt.backends import FunctionBackend


def text_features(text, n_features):
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return rng.standard_normal(n_features)


class LinearToyModel:
    """Picklable query function ``fn(prompts, texts) -> scores``."""

    def __init__(self, n_classes=2, n_features=3, scale=3.0, labels_only=False):
        self.n_classes = n_classes
        self.n_features = n_features
        self.scale = scale
        self.labels_only = labels_only
        self.calls = []  # (n_prompts, n_texts) of every call

    @property
    def embedding_dim(self):
        return self.n_classes * self.n_features

    def __call__(self, prompts, texts):
        self.calls.append((prompts.shape[0], len(texts)))
        phi = np.stack([text_features(t, self.n_features) for t in texts])  # (N, m)
        if prompts.shape[1] == 0:
            scores = np.zeros((prompts.shape[0], len(texts), self.n_classes))
        else:
            W = prompts[:, 0, :].reshape(len(prompts), self.n_classes, self.n_features)
            scores = self.scale * np.einsum("pcm,nm->pnc", W, phi)
        if self.labels_only:
            return scores.argmax(axis=-1)
        return scores


def make_toy_task(n_texts=60, n_classes=2, n_features=3, seed=0, labels_only=False, label_names=None):
    """A backend, texts and labels for which a perfect prompt exists."""
    model = LinearToyModel(n_classes, n_features, labels_only=labels_only)
    backend = FunctionBackend(model, embedding_dim=model.embedding_dim, labels_only=labels_only)
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal((n_classes, n_features))
    texts = [f"document {seed}-{i}" for i in range(n_texts)]
    phi = np.stack([text_features(t, n_features) for t in texts])
    y_idx = (phi @ w_true.T).argmax(axis=1)
    names = np.asarray(label_names if label_names is not None else [f"class_{c}" for c in range(n_classes)])
    return backend, texts, names[y_idx], model


def linear_toy_scores(prompts, texts):
    """``LinearToyModel()`` (2 classes, 3 features) as a module-level function:
    what a FunctionBackend saves by reference (pickle, skops)."""
    return LinearToyModel()(prompts, texts)

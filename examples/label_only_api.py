"""Tuning through an API that returns only labels (ABC-SMC).

The "API" here is a plain Python function; in real use it would be a client
that sends the soft prompts and texts to a remote service. To keep the
example offline, the service is simulated by the local SmolLM2 model, and it
answers with the predicted class index only: no scores, no weights.

This simulated service takes the soft prompt as an *offset* to the
embeddings of its own template's last tokens, so the all-zero prompt is its
plain zero-shot behaviour and the search starts there.

Run: ``python examples/label_only_api.py`` (about a minute on 2 CPU cores).
"""

import numpy as np

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import FunctionBackend
from skprompt.datasets import few_shot_split, load_task
from skprompt.models import default_backend

task = load_task("rotten_tomatoes")
data = few_shot_split(task.texts, task.target, n_per_class=16, n_test=200, random_state=0)

# ----------------------------------------------------------- the "service"
_model = default_backend(template=task.template, verbalizer=task.verbalizer)
N_TOKENS = _model.default_prompt_length
_tail = _model.initial_prompt(N_TOKENS)
_classes = sorted(task.verbalizer)


def label_only_api(prompt_embeddings, texts):
    """(n_prompts, n_tokens, dim) float32 + list of str -> (n_prompts, n_texts) class indices."""
    if prompt_embeddings.shape[1] == 0:  # no soft prompt: the service's zero-shot answer
        prompt_embeddings = np.zeros((len(prompt_embeddings), N_TOKENS, _tail.shape[1]), np.float32)
    return _model.predict_labels(prompt_embeddings + _tail, texts, _classes)


# ------------------------------------------------------------- the client
mean, std = _model.embedding_stats()  # the only model statistic the method uses
api = FunctionBackend(label_only_api, embedding_dim=_tail.shape[1], labels_only=True, embedding_std=float(std))

for method in ("zero-shot", "abc-smc"):
    clf = BlackBoxPromptClassifier(api, method=method, n_prompt_tokens=N_TOKENS, budget=4000, random_state=0)
    clf.fit(data.X_train, data.y_train)
    proba = clf.predict_proba(data.X_test)  # a smoothed, weighted vote of the posterior's prompts
    accuracy = np.mean(clf.classes_[proba.argmax(axis=1)] == data.y_test)
    votes = clf.predict_uncertainty(data.X_test).total
    print(f"{method:>9}: accuracy {accuracy:.3f}, {clf.n_queries_} fit queries, "
          f"texts with split votes: {np.mean(votes > 0):.0%}")

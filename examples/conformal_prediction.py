"""Conformal prediction sets with MAPIE, from scores and from labels only.

MAPIE's ``SplitConformalClassifier`` turns a fitted classifier into one that
predicts *sets* of labels containing the true label with probability at
least ``confidence_level`` (here 0.9) on exchangeable data, whatever the model.
It works with :class:`~skprompt.BlackBoxPromptClassifier` as it is; only
the texts must be an array rather than a list (MAPIE counts the "features" of
``X`` before calling the estimator, and a list of str has none):
``X = np.asarray(texts, dtype=object)``.

Two classifiers on the bundled SmolLM2-135M-Instruct and Rotten Tomatoes:

- ``method="zero-shot"`` with its calibrated read-out: probabilities from
  the model's class scores, with MAPIE's default "lac" score;
- a label-only view of the same model (it answers the predicted label only,
  as some APIs do) tuned by ``method="abc-smc"``: probabilities are the
  smoothed vote of 16 prompts. Most texts get a unanimous vote, so these
  probabilities take few distinct values and the plain "lac" score, whose
  threshold then falls on a tie, returns both labels for every text
  (coverage 1, no information). :class:`RandomizedLAC` breaks the ties at
  random, as conformal prediction does for discrete scores; its coverage is
  then close to 0.9 (docs/conformal.md).

Run: ``python examples/conformal_prediction.py`` (about 6,600 model queries:
one to two minutes on a quiet 2-core CPU). Needs the demo assets (see the README's demo command) and
``pip install "mapie>=1.0"`` (the ``conformal`` extra).
"""

import numpy as np
from mapie.classification import SplitConformalClassifier
from mapie.conformity_scores import LACConformityScore
from sklearn.utils import check_random_state

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import FunctionBackend


class RandomizedLAC(LACConformityScore):
    """MAPIE's "lac" score (1 - probability of the label) with ties broken at random.

    Adds ``jitter * U(0, 1)`` to every conformalization score and to every
    (text, label) score at prediction, so that no two scores are equal: the
    coverage of the sets is then at least ``confidence_level`` and less than
    ``confidence_level + 1 / (n_conformalize + 1)`` on average, however few
    distinct values the probabilities take (vote probabilities). A label
    whose score equals the threshold is included at random, in the share that
    makes the coverage exact. With continuous probabilities the jitter only
    reorders scores closer than ``jitter``. Pass ``random_state`` to MAPIE
    for reproducible sets; each ``predict_set`` call draws anew.
    """

    def __init__(self, jitter=1e-4):
        super().__init__()
        self.jitter = jitter

    def set_external_attributes(self, *, random_state=None, **kwargs):
        super().set_external_attributes(random_state=random_state, **kwargs)
        self.rng_ = check_random_state(random_state)

    def get_conformity_scores(self, y, y_pred, y_enc=None, **kwargs):
        scores = super().get_conformity_scores(y, y_pred, y_enc=y_enc, **kwargs)
        return scores + self.jitter * self.rng_.uniform(size=scores.shape)

    def get_prediction_sets(self, y_pred_proba, conformity_scores, alpha_np, cv, agg_scores="mean", **kwargs):
        noise = self.jitter * self.rng_.uniform(size=y_pred_proba.shape[:2] + (1,))
        return super().get_prediction_sets(y_pred_proba - noise, conformity_scores, alpha_np, cv,
                                           agg_scores=agg_scores, **kwargs)


def label_only_view(model, classes):
    """The transformers backend ``model`` behind an API that answers labels only.

    As in examples/label_only_api.py, the soft prompt is an offset to the
    embeddings of the template's last tokens (the zero prompt is the plain
    zero-shot input), and the answer is the predicted class index.
    """
    n_tokens = model.default_prompt_length
    tail = model.initial_prompt(n_tokens)

    def api(prompt_embeddings, texts):
        if prompt_embeddings.shape[1] == 0:
            prompt_embeddings = np.zeros((len(prompt_embeddings), n_tokens, tail.shape[1]), np.float32)
        return model.predict_labels(prompt_embeddings + tail, texts, classes)

    _, std = model.embedding_stats()
    return FunctionBackend(api, embedding_dim=tail.shape[1], labels_only=True, embedding_std=float(std))


def coverage_and_size(sets, y, classes):
    """Share of texts whose set holds the true label, and mean set size."""
    sets = sets[:, :, 0]  # MAPIE's sets: (n_texts, n_classes, n_confidence_levels)
    covered = sets[np.arange(len(sets)), np.searchsorted(classes, y)]
    return covered.mean(), sets.sum(axis=1).mean()


def main(n_conformalize=150, n_new=150, budget=1500):
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.models import default_backend

    task = load_task("rotten_tomatoes")
    data = few_shot_split(task.texts, task.target, n_per_class=16, n_test=n_conformalize + n_new, random_state=0)
    # MAPIE needs an array of texts, not a list (the one-liner):
    X_test = np.asarray(data.X_test, dtype=object)
    X_conf, y_conf = X_test[:n_conformalize], data.y_test[:n_conformalize]  # conformalization texts
    X_new, y_new = X_test[n_conformalize:], data.y_test[n_conformalize:]  # held-out texts

    model = default_backend(template=task.template, verbalizer=task.verbalizer)
    api = label_only_view(model, sorted(task.verbalizer))
    setups = {
        "zero-shot (scores)": (
            BlackBoxPromptClassifier(model, method="zero-shot", random_state=0), "lac"),
        "abc-smc (labels only)": (
            BlackBoxPromptClassifier(api, method="abc-smc", n_prompt_tokens=model.default_prompt_length,
                                     budget=budget, random_state=0), RandomizedLAC()),
    }
    for name, (clf, score) in setups.items():
        clf.fit(data.X_train, data.y_train)
        mapie = SplitConformalClassifier(clf, confidence_level=0.9, conformity_score=score, prefit=True,
                                         random_state=0)
        mapie.conformalize(X_conf, y_conf)
        y_pred, sets = mapie.predict_set(X_new)
        coverage, size = coverage_and_size(sets, y_new, clf.classes_)
        print(f"{name}: accuracy {np.mean(y_pred == y_new):.3f}; 90% sets: coverage {coverage:.3f}, "
              f"mean size {size:.2f}")
        if clf.labels_only_:  # the plain score, for contrast: a tie at the threshold
            plain = SplitConformalClassifier(clf, confidence_level=0.9, prefit=True).conformalize(X_conf, y_conf)
            coverage, size = coverage_and_size(plain.predict_set(X_new)[1], y_new, clf.classes_)
            print(f"{'':>{len(name)}}  plain 'lac' score: coverage {coverage:.3f}, mean size {size:.2f}")
        for i in range(3):
            labels = clf.classes_[sets[i, :, 0]]
            print(f"    {{{', '.join(labels)}}} (true: {y_new[i]}) {X_new[i][:70]!r}")


if __name__ == "__main__":
    main()

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
  (coverage 1, no information). ``skprompt.conformal.RandomizedLAC`` breaks
  the ties at random, as conformal prediction does for discrete scores; its
  coverage is then close to 0.9 (docs/conformal.md).
  ``skprompt.conformal.SplitConformalSets`` does the same without MAPIE (and
  takes the list of texts as it is).

Run: ``python examples/conformal_prediction.py`` (about 6,600 model queries:
one to two minutes on a quiet 2-core CPU). Needs the demo assets (see the README's demo command) and
``pip install "mapie>=1.0"`` (the ``conformal`` extra).
"""

import numpy as np
from mapie.classification import SplitConformalClassifier

from skprompt import BlackBoxPromptClassifier
from skprompt.backends import FunctionBackend
from skprompt.conformal import RandomizedLAC, SplitConformalSets, coverage_and_size


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
        sets = sets[:, :, 0]  # MAPIE's sets: (n_texts, n_classes, n_confidence_levels)
        coverage, size = coverage_and_size(y_new, sets, clf.classes_)
        print(f"{name}: accuracy {np.mean(y_pred == y_new):.3f}; 90% sets: coverage {coverage:.3f}, "
              f"mean size {size:.2f}")
        if clf.labels_only_:  # the plain score, for contrast: a tie at the threshold
            plain = SplitConformalClassifier(clf, confidence_level=0.9, prefit=True).conformalize(X_conf, y_conf)
            coverage, size = coverage_and_size(y_new, plain.predict_set(X_new)[1][:, :, 0], clf.classes_)
            print(f"{'':>{len(name)}}  plain 'lac' score: coverage {coverage:.3f}, mean size {size:.2f}")
            # The same tie-breaking without MAPIE; a list of texts works as it is. The
            # backend's result cache answers these queries: no new model call.
            own = SplitConformalSets(clf, confidence_level=0.9, random_state=0)
            own.conformalize(list(X_conf), y_conf)
            coverage, size = coverage_and_size(y_new, own.predict_set(list(X_new))[1], clf.classes_)
            print(f"{'':>{len(name)}}  SplitConformalSets: coverage {coverage:.3f}, mean size {size:.2f}")
        for i in range(3):
            labels = clf.classes_[sets[i]]
            print(f"    {{{', '.join(labels)}}} (true: {y_new[i]}) {X_new[i][:70]!r}")


if __name__ == "__main__":
    main()

"""Choose a template and label words by cross-validated log loss (GridSearchCV).

The transformers backends expose their construction arguments as parameters,
so ``backend__template`` and ``backend__verbalizer`` are tuned like any other
hyper-parameter; each candidate gets a clone of the backend that shares the
loaded weights and the texts' cached encodings. ``method="zero-shot"`` with
its calibrated read-out costs one query per fit text, so the whole search is
a few hundred queries.

Run: ``python examples/select_template.py`` (about a minute on 2 CPU cores).
Needs the demo assets (see the README's demo command).
"""

import numpy as np
from sklearn.model_selection import GridSearchCV

from skprompt import BlackBoxPromptClassifier
from skprompt.datasets import few_shot_split, load_task
from skprompt.models import default_backend

task = load_task("rotten_tomatoes")
data = few_shot_split(task.texts, task.target, n_per_class=24, n_test=100, random_state=0)
backend = default_backend(template=task.template, verbalizer=task.verbalizer)

grid = {
    "backend__template": [task.template, "{text}\nAnswer:", "Movie review: {text}\nWas the review positive or negative?"],
    "backend__verbalizer": [task.verbalizer, {"fresh": "good", "rotten": "bad"}],
}
search = GridSearchCV(BlackBoxPromptClassifier(backend, method="zero-shot", random_state=0), grid, cv=3,
                      scoring="neg_log_loss")
search.fit(data.X_train, data.y_train)

for params, score in sorted(zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]),
                            key=lambda item: -item[1]):
    print(f"CV log loss {-score:.3f}: template={params['backend__template']!r}, "
          f"words={sorted(params['backend__verbalizer'].values())}")
best = search.best_estimator_
accuracy = np.mean(best.predict(data.X_test) == data.y_test)
print(f"chosen: {search.best_params_['backend__template']!r}; test accuracy {accuracy:.3f}")

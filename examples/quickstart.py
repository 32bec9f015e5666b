"""Quick start: a prompt ensemble for SmolLM2-135M on Rotten Tomatoes reviews.

Run: ``python examples/quickstart.py`` (about a minute on 2 CPU cores).
Needs the demo assets (see the README's demo command).
"""

import numpy as np

from skprompt import BlackBoxPromptClassifier
from skprompt.datasets import few_shot_split, load_task
from skprompt.metrics import expected_calibration_error
from skprompt.models import default_backend

task = load_task("rotten_tomatoes")
data = few_shot_split(task.texts, task.target, n_per_class=16, n_test=200, random_state=0)
backend = default_backend(template=task.template, verbalizer=task.verbalizer)

# A budget caps the (prompt, text) pairs the model scores during fit.
clf = BlackBoxPromptClassifier(backend, method="ensemble", budget=3000, random_state=0, verbose=1)
clf.fit(data.X_train, data.y_train)

proba = clf.predict_proba(data.X_test)
accuracy = np.mean(clf.classes_[proba.argmax(axis=1)] == data.y_test)
ece = expected_calibration_error(data.y_test, proba, labels=clf.classes_)
print(f"{len(clf.samples_)} prompts, {clf.n_queries_} fit queries")
print(f"test accuracy {accuracy:.3f}, ECE {ece:.3f}")

# Per-text uncertainty: total = aleatoric (each prompt unsure) + epistemic (prompts disagree).
u = clf.predict_uncertainty(data.X_test)
for i in np.argsort(-u.epistemic)[:3]:
    print(f"prompts disagree most on: {data.X_test[i][:70]!r} -> {clf.predict([data.X_test[i]])[0]}")

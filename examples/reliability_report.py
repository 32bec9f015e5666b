"""Is a prompt distribution more reliable than one prompt? A small report.

Fits one BBT prompt and a prompt ensemble on Rotten Tomatoes, then compares
calibration (ECE, reliability diagram), how well uncertainty flags mistakes
(risk-rejection area, AUROC) and out-of-distribution texts (BBC news).
Writes ``reliability.png``. Run: ``python examples/reliability_report.py``
(about two minutes on 2 CPU cores).
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from skprompt import BlackBoxPromptClassifier  # noqa: E402
from skprompt.datasets import few_shot_split, load_task, ood_texts  # noqa: E402
from skprompt.metrics import (  # noqa: E402
    expected_calibration_error,
    misclassification_auroc,
    ood_auroc,
    predictive_entropy,
    reliability_diagram,
    risk_rejection_auc,
)
from skprompt.models import default_backend  # noqa: E402

task = load_task("rotten_tomatoes")
data = few_shot_split(task.texts, task.target, n_per_class=16, n_test=200, random_state=0)
ood = ood_texts("bbc_news", 100, random_state=0)
backend = default_backend(template=task.template, verbalizer=task.verbalizer)

fig, ax = plt.subplots(figsize=(5, 5))
for method in ("bbt", "ensemble"):
    clf = BlackBoxPromptClassifier(backend, method=method, budget=3000, random_state=0).fit(data.X_train, data.y_train)
    proba = clf.predict_proba(data.X_test)
    pred = clf.classes_[proba.argmax(axis=1)]
    errors = pred != data.y_test
    unc = predictive_entropy(proba)
    unc_ood = predictive_entropy(clf.predict_proba(ood))
    is_ood = np.r_[np.zeros(len(unc)), np.ones(len(unc_ood))]
    print(f"{method:>8}: accuracy {1 - errors.mean():.3f} | "
          f"ECE {expected_calibration_error(data.y_test, proba, labels=clf.classes_):.3f} | "
          f"mistakes: risk-rejection area {risk_rejection_auc(errors, unc):.3f}, "
          f"AUROC {misclassification_auroc(data.y_test, pred, unc):.3f} | "
          f"OOD AUROC {ood_auroc(is_ood, np.r_[unc, unc_ood]):.3f}")
    reliability_diagram(data.y_test, proba, labels=clf.classes_, ax=ax, name=method)
fig.savefig("reliability.png", dpi=100)
print("wrote reliability.png")

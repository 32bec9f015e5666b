"""Benchmark helpers: resumable rows (one JSON file per row in a folder), and the split a fit makes."""

from __future__ import annotations

import json
import os



def run_rows(out, jobs):
    """Run ``jobs`` (pairs of a file name and a function returning a row) one
    by one, each row written to ``out/<name>.json``; a row already there is
    skipped, and a run killed mid-row leaves no half-written file. Yields each
    new row."""
    os.makedirs(out, exist_ok=True)
    for name, job in jobs:
        path = os.path.join(out, f"{name}.json")
        if os.path.exists(path):
            continue
        row = job()
        with open(path + ".tmp", "w") as fh:
            json.dump(row, fh, indent=1)
        os.replace(path + ".tmp", path)
        yield row


class RecordSplit:
    """Records the (train, validation) split an estimator's ``fit`` makes (either estimator)."""

    def __enter__(self):
        from skprompt import classifier, whitebox
        from skprompt._estimator import validation_split

        self._modules = classifier, whitebox
        self.split, self._saved = None, (classifier.validation_split, whitebox.validation_split)

        def record(*args, **kwargs):
            made = validation_split(*args, **kwargs)
            self.split = made[0] if kwargs.get("positions") else made  # (splits, positions) with positions=True
            return made

        classifier.validation_split = whitebox.validation_split = record
        return self

    def __exit__(self, *exc):
        classifier, whitebox = self._modules
        classifier.validation_split, whitebox.validation_split = self._saved

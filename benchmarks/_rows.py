"""Resumable benchmark rows: one JSON file per row in a folder."""

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

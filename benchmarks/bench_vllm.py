"""Throughput of VLLMBackend (a vLLM server over HTTP) vs CausalLMBackend (in process).

The same scoring work for both: SmolLM2-135M-Instruct in float32, Rotten
Tomatoes texts, ``--prompts`` new soft prompts per round (near the template's
tail, as CMA-ES proposes them) on ``--texts`` texts, the result caches off,
so every (prompt, text) pair is computed. Rounds alternate between the two
backends so that a busy machine slows them alike; the figure is the ratio of
their median pairs per second, measured in this one run. Max |difference| of
their class log-probabilities is printed too.

Run from a checkout with the asset packages installed::

    python benchmarks/bench_vllm.py                    # starts its own server (tests/vllm_server.py)
    python benchmarks/bench_vllm.py --url http://127.0.0.1:8000 --api-key-env VLLM_API_KEY

The vLLM server and the in-process backend share this machine's cores: on a
2-core machine the comparison says what a laptop gains (or loses) by putting
the model behind a local server; a GPU server is another machine entirely.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"fresh": "positive", "rotten": "negative"}
CLASSES = ["fresh", "rotten"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--api-key-env", default="VLLM_API_KEY")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process backend")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--pairs-per-request", type=int, default=16)
    args = parser.parse_args(argv)

    import torch

    from skprompt.backends import CausalLMBackend
    from skprompt.backends.vllm import VLLMBackend
    from skprompt.datasets import load_task
    from skprompt.models import default_model_path

    torch.set_num_threads(args.threads)
    model_dir = str(default_model_path())
    server = None
    if args.url is None:
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        from vllm_server import VLLMServer

        key = os.environ.setdefault(args.api_key_env, "bench-" + os.urandom(8).hex())
        print("starting a vLLM server ...", flush=True)
        server = VLLMServer(model_dir, key).start()
        url = server.url
        print(f"server up in {server.start_seconds:.0f} s", flush=True)
    else:
        url = args.url
    try:
        task = load_task("rotten_tomatoes")
        rng = np.random.default_rng(0)
        texts = [task.texts[i] for i in rng.choice(len(task.texts), size=args.texts, replace=False)]
        remote = VLLMBackend(url, model_dir, template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                             api_key_env=args.api_key_env, max_concurrency=args.max_concurrency,
                             pairs_per_request=args.pairs_per_request)
        local = CausalLMBackend(model_dir, template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                                num_threads=args.threads)
        init = local.initial_prompt(local.default_prompt_length)
        _, std = local.embedding_stats()

        def prompts(seed):
            noise = np.random.default_rng(seed).normal(0, 0.2 * std, (args.prompts,) + init.shape)
            return (init[None] + noise).astype(np.float32)

        # First calls (the in-process backend encodes every text once; the
        # server has nothing to reuse across requests in this layout).
        p0 = prompts(0)
        start = time.perf_counter()
        first_local = local.score(p0, texts, CLASSES)
        local_first = time.perf_counter() - start
        start = time.perf_counter()
        first_remote = remote.score(p0, texts, CLASSES)
        remote_first = time.perf_counter() - start
        diff = float(np.abs(first_local - first_remote).max())
        rates = {"in-process": [], "vLLM": []}
        for r in range(args.rounds):
            p = prompts(r + 1)
            for name, backend in (("in-process", local), ("vLLM", remote)):
                start = time.perf_counter()
                backend.score(p, texts, CLASSES)
                rates[name].append(len(p) * len(texts) / (time.perf_counter() - start))
        n_pairs = args.prompts * len(texts)
        median = {k: statistics.median(v) for k, v in rates.items()}
        print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"in-process torch threads: {args.threads}; vLLM: {url}, max_concurrency {args.max_concurrency}, "
              f"{args.pairs_per_request} pairs/request")
        print(f"work: {args.prompts} prompts x {len(texts)} texts = {n_pairs} pairs per round, {args.rounds} rounds")
        print(f"max |log-prob difference| vLLM vs in-process: {diff:.2e}")
        print(f"first call: in-process {n_pairs / local_first:.1f} pairs/s, vLLM {n_pairs / remote_first:.1f} pairs/s")
        print(f"steady:     in-process {median['in-process']:.1f} pairs/s, vLLM {median['vLLM']:.1f} pairs/s")
        print(f"ratio vLLM / in-process (steady): {median['vLLM'] / median['in-process']:.2f}x")
        print(f"HTTP requests: {remote.stats['http_requests']} for {remote.stats['pairs']} pairs")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()

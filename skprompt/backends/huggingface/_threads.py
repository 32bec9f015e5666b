"""Torch's threads during a backend call, and returning freed heap memory to the system."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import numbers
import os
import sys
import threading

import torch


def _check_num_threads(value):
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"num_threads must be None or a positive int; got {value!r}.")
    return int(value)


def _available_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except OSError:
            pass
    return max(os.cpu_count() or 1, 1)


def default_num_threads():
    """The torch thread count of ``num_threads=None``.

    ``OMP_NUM_THREADS`` when it is set to a positive int (by the user, or by
    joblib's loky backend, which starts each worker of ``GridSearchCV(n_jobs=k)``
    or ``cross_val_score(n_jobs=k)`` with ``cpu_count // k`` threads), else
    the number of CPUs this process may run on (its CPU affinity), never more.

    Returns
    -------
    int
    """
    cpus = _available_cpus()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), cpus)
    return cpus


# torch's intra-op thread count is global to the process: the backends set it
# for the duration of their scoring calls and put it back after the last
# concurrent call ends.
_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"active": 0, "saved": None}


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another libc, another OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _trim_heap():
    """Give the heap's freed memory back to the OS (a no-op without glibc).

    Streaming prediction frees every micro-batch's key/value caches, but
    glibc keeps freed blocks of its heap while small long-lived objects (the
    result cache's entries, made during the same call) sit above them, so the
    process grew with the number of texts: 1,000 streamed texts left +133 MB
    behind, +7 MB with large blocks given their own mappings (measured in
    docs/performance.md). Nothing in torch or the standard library returns
    that memory, hence ctypes; one call per streamed chunk of texts costs
    well under a millisecond next to seconds of encoding.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def _torch_threads(n):
    with _THREADS_LOCK:
        if _THREADS_STATE["active"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            if n != _THREADS_STATE["saved"]:
                torch.set_num_threads(n)
        _THREADS_STATE["active"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["active"] -= 1
            if _THREADS_STATE["active"] == 0 and torch.get_num_threads() != _THREADS_STATE["saved"]:
                torch.set_num_threads(_THREADS_STATE["saved"])


def _with_threads(method):
    """Run a scoring method with torch's threads set as the backend says (``_threads``)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._threads():
            return method(self, *args, **kwargs)
    return wrapper


#: What the transformers backends do with a text too long for the model's
#: context (the ``truncation`` parameter).

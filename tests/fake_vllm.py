"""A stand-in for vLLM's OpenAI-compatible server, for fast tests.

It serves a (tiny) transformers model in a thread on loopback and answers the
part of vLLM's API that :class:`~skprompt.backends.vllm.VLLMBackend` uses,
as vLLM 0.32 does (checked against the real server by tests/test_vllm.py):
``GET /health``, ``GET /v1/models`` (with ``max_model_len``) and ``POST
/v1/completions`` with ``prompt_embeds`` (base64 of ``torch.save`` of a
(length, hidden) tensor, or a list of them), ``max_tokens=1``, greedy
decoding, ``logprobs`` (raw full-vocabulary log-softmax, at most 20),
``allowed_token_ids`` and ``return_tokens_as_token_ids``; a bearer key.
``logprobs_mode`` is the server's ``--logprobs-mode``: ``"raw_logprobs"``
(the default), ``"processed_logprobs"`` (after the ``allowed_token_ids``
restriction; masked tokens listed at -9999, as vLLM does) or ``"raw_logits"``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

MAX_LOGPROBS = 20


class FakeVLLM:
    def __init__(self, model_dir, *, api_key=None, max_model_len=256, port=0, logprobs_mode="raw_logprobs",
                 enable_prompt_embeds=True, max_logprobs=MAX_LOGPROBS):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.name, self.api_key, self.max_model_len = str(model_dir), api_key, max_model_len
        self.requests = 0
        self.logprobs_mode = logprobs_mode
        self.enable_prompt_embeds, self.max_logprobs = enable_prompt_embeds, max_logprobs
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self):
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._reply(401, {"error": {"message": "Unauthorized"}})
                    return False
                return True

            def do_GET(self):
                if self.path == "/health":
                    return self._reply(200, {})
                if not self._authorised():
                    return None
                if self.path == "/v1/models":
                    return self._reply(200, {"object": "list", "data": [
                        {"id": fake.name, "object": "model", "max_model_len": fake.max_model_len}]})
                return self._reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self._authorised():
                    return None
                if self.path != "/v1/completions":
                    return self._reply(404, {"error": {"message": f"no route {self.path}"}})
                with fake.lock:
                    fake.requests += 1
                try:
                    return self._reply(200, fake.complete(body))
                except ValueError as exc:
                    return self._reply(400, {"error": {"message": str(exc), "type": "BadRequestError"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def complete(self, body):
        if body.get("model") != self.name:
            raise ValueError(f"The model `{body.get('model')}` does not exist.")
        embeds = body.get("prompt_embeds")
        if embeds is not None and not self.enable_prompt_embeds:  # vLLM's words
            raise ValueError("You must set `--enable-prompt-embeds` to input `prompt_embeds`.")
        embeds = embeds if isinstance(embeds, list) else [embeds]
        k = body.get("logprobs")
        if k is not None and k > self.max_logprobs:
            raise ValueError(f"Requested sample logprobs of {k}, which is greater than max allowed: "
                             f"{self.max_logprobs}")
        allowed = body.get("allowed_token_ids")
        as_ids = body.get("return_tokens_as_token_ids", False)
        choices = []
        for index, encoded in enumerate(embeds):
            x = torch.load(io.BytesIO(base64.b64decode(encoded)), weights_only=True)
            with torch.inference_mode():
                logits = self.model(inputs_embeds=x[None].to(self.model.dtype)).logits[0, -1].float()
            masked = logits.clone()
            if allowed:
                keep = torch.full_like(masked, float("-inf"))
                keep[allowed] = 0
                masked = masked + keep
            token = int(torch.argmax(masked))
            logprobs = {"raw_logprobs": lambda: torch.log_softmax(logits, dim=-1), "raw_logits": lambda: logits,
                        "processed_logprobs": lambda: torch.log_softmax(masked, dim=-1).clamp(min=-9999.0),
                        }[self.logprobs_mode]()

            def name(t):
                return f"token_id:{t}" if as_ids else self.tokenizer.decode([t])

            choice = {"index": index, "text": self.tokenizer.decode([token]), "finish_reason": "length"}
            if k is not None:
                top = torch.topk(logprobs, k) if k > 0 else None
                choice["logprobs"] = {
                    "tokens": [name(token)], "token_logprobs": [float(logprobs[token])], "text_offset": [0],
                    "top_logprobs": [{name(int(t)): float(v) for v, t in zip(top.values, top.indices)}
                                     if top is not None else {}],
                }
            choices.append(choice)
        return {"object": "text_completion", "model": self.name, "choices": choices}

    def close(self):
        """Stop answering (as a killed server: connections are refused)."""
        self.server.shutdown()
        self.server.server_close()

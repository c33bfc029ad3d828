"""``blackbox serve``: an OpenAI-compatible server backed by the embedded model (offline checks)."""
from __future__ import annotations

import argparse
import os

from blackbox.errors import InputError

from .options import nonneg_float, nonneg_int


def port_number(text: str) -> int:
    value = nonneg_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value

DESCRIPTION = """\
Serve the embedded EfficientNet-Lite0 as an OpenAI-compatible vision chat model
('efficientnet-lite0'): /v1/models and /v1/chat/completions answering 'Is there a {label} in this
image?' with logprobs. Then run e.g.
  blackbox saliency coffee.png --model openai:efficientnet-lite0 --base-url http://127.0.0.1:8000/v1 --target espresso
It also serves the embedded SmolLM2-135M ('smollm2-135m-instruct', loaded on the first text request)
on /v1/completions and /v1/chat/completions with logprobs/top_logprobs, e.g. for
  blackbox tune-prompt --model openai:smollm2-135m-instruct --base-url http://127.0.0.1:8000/v1 --api chat
"""


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible server backed by the embedded model (offline checks)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, loopback only; any other needs --require-key-env)")
    s.add_argument("--port", type=port_number, default=8000, help="port (default: 8000; 0 = any free port)")
    s.add_argument("--require-key-env", metavar="VAR", help="require the API key held in this environment variable")
    s.add_argument("--latency", type=nonneg_float, default=0.0, metavar="S", help="add S seconds per request")
    s.add_argument("--no-logprobs", action="store_true", help="never return logprobs (to try the fallbacks)")
    s.add_argument("--verbose", action="store_true", help="log every request line to stderr")


def run(args) -> int:
    from blackbox.adapters.remote.serve import LOOPBACK, serve

    key = None
    if args.require_key_env:
        key = os.environ.get(args.require_key_env)
        if not key:
            raise InputError(f"--require-key-env {args.require_key_env}: that environment variable is empty")
    if args.host not in LOOPBACK and key is None:
        raise InputError(f"serving on {args.host} (not loopback) lets others on the network query it: "
                         "also pass --require-key-env VAR, or serve on 127.0.0.1")
    try:
        serve(args.host, args.port, announce=lambda m: print(m, flush=True),
              latency=args.latency, api_key=key, no_logprobs=args.no_logprobs, verbose=args.verbose)
    except OSError as exc:
        raise InputError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0

"""Remote models: OpenAI-compatible and plain JSON endpoints as query functions.

``engine.QueryEngine`` (cache, budget, rate limits, retries, concurrency) carries every request,
with ``spending`` (reservations and settlement), ``sending`` (threads, rate limits, retries) and
``outcomes`` (what each attempt's outcome means: retry or not, maybe billed or not);
``openai_vision`` and ``http_model`` turn endpoints into image models; ``serve`` runs an
OpenAI-compatible server backed by the embedded classifier for offline checks.
"""

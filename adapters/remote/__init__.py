"""Remote models: OpenAI-compatible and plain JSON endpoints as query functions.

``engine.QueryEngine`` (cache, budget, rate limits, retries, concurrency) carries every request;
``openai_vision`` and ``http_model`` turn endpoints into image models; ``serve`` runs an
OpenAI-compatible server backed by the embedded classifier for offline checks.
"""

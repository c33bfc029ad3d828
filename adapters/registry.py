"""Model names the CLI and notebooks accept, and how each is loaded."""
from __future__ import annotations

from blackbox.errors import ModelError

DEFAULT_MODEL = "efficientnet-lite0"
KNOWN_MODELS = {
    "efficientnet-lite0": "embedded ImageNet classifier (default; offline, ONNX runtime)",
    "efficientnet-lite0-torch": "the same model run by eager torch (white-box capable, slower)",
    "gpt-vision": "an OpenAI vision model scored by log P('Yes') (needs OPENAI_API_KEY)",
    "openai:<model>": "any OpenAI-compatible chat endpoint with image input (--base-url)",
    "http:<spec.json>": "a JSON HTTP endpoint described by a spec file (url, request template, score path)",
    "onnx:<model.onnx>": "your own ONNX image classifier (--labels FILE and the preprocessing options)",
    "torchscript:<model.pt>": "your own TorchScript image classifier (--labels FILE, preprocessing options)",
}


def load_image_model(name: str = DEFAULT_MODEL, **options):
    """Return an :class:`~blackbox.models.ImageModel` for a model name (see ``KNOWN_MODELS``)."""
    if name in ("efficientnet-lite0", "default", "embedded"):
        from .embedded import embedded_model

        return embedded_model(**options)
    if name == "efficientnet-lite0-torch":
        from .embedded import embedded_model

        return embedded_model(backend="torch", **options)
    if name == "gpt-vision" or name.startswith("openai:"):
        from .remote.openai_vision import openai_vision_model

        return openai_vision_model(name, **options)
    if name.startswith(("onnx:", "torchscript:")):
        from .model_files import load_model_file

        return load_model_file(name, **options)
    if name.startswith("http:"):
        from .remote.http_model import http_image_model

        return http_image_model(name[len("http:"):], **options)
    known = ", ".join(KNOWN_MODELS)
    raise ModelError(f"unknown model {name!r}; known models: {known}")

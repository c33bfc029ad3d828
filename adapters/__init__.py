"""Edges to real models. Heavy dependencies are imported lazily, inside each adapter."""
from .registry import KNOWN_MODELS, load_image_model
from .spec import ModelSpec, model_spec

__all__ = ["KNOWN_MODELS", "load_image_model", "ModelSpec", "model_spec"]

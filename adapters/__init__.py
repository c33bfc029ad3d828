"""Edges to real models. Heavy dependencies are imported lazily, inside each adapter."""
from .registry import KNOWN_MODELS, load_image_model

__all__ = ["KNOWN_MODELS", "load_image_model"]

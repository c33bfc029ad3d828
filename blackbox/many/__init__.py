"""Many images in one call: :func:`explain_many`, run here, in local worker processes or on a Ray
cluster, under one shared budget, resumable from a results folder."""
from .results import BatchResult, ImageResult
from .run import collect_images, explain_many

__all__ = ["BatchResult", "ImageResult", "collect_images", "explain_many"]

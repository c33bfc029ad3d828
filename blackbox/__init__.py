"""blackbox: optimise and explain models you can only query.

Core (numpy only): query functions and budgets, likelihood-ratio gradient estimators, saliency,
metrics and plots. Models live in :mod:`blackbox.adapters`; the command line in :mod:`blackbox.cli`.
"""
import numpy as np

from .errors import BlackboxError, BudgetExceeded, InputError, MissingDependency, ModelError
from .estimators import GradientEstimate, lr_gradient
from .saliency.spaces import MaskSpace, PatchGrid, PixelSpace
from .images import ImageView, load_image
from .saliency.metrics import cosine, deletion_insertion, spearman
from .models import Classifier, ImageModel, Target
from .queries import Budget, QueryFunction, QueryRunner
from .saliency import Saliency, SaliencyResult, make_baseline, saliency
from .many import BatchResult, ImageResult, explain_many

__version__ = "0.1.0"

__all__ = [
    "BlackboxError", "BudgetExceeded", "InputError", "MissingDependency", "ModelError",
    "GradientEstimate", "lr_gradient", "MaskSpace", "PatchGrid", "PixelSpace", "ImageView",
    "load_image", "cosine", "deletion_insertion", "spearman", "Classifier", "ImageModel", "Target",
    "Budget", "QueryFunction", "QueryRunner", "Saliency", "SaliencyResult", "make_baseline", "saliency",
    "explain", "explain_many", "BatchResult", "ImageResult",
]


def explain(image, model, target=None, *, queries: int = 1000, seed: int | None = 0, budget: Budget | None = None,
            progress: bool = False, batch: bool = False, **options) -> SaliencyResult:
    """Notebook shortcut: a saliency map of ``image`` (a path or an array) on ``model``.

    ``model`` is any :class:`ImageModel` (for example ``blackbox.adapters.load_image_model()``,
    the embedded classifier); ``target`` is a label, a class index or None for the top class;
    ``options`` name the parts as :func:`saliency` does. ``batch``: a paid endpoint with a batch
    interface answers through it (OpenAI's Batch API: half price, answers later; the same map).
    The map at the image's own resolution is ``result.full_map`` (``result.display_map`` for drawing).
    """
    from .images import as_float_image
    from .saliency.pipeline import explain_image

    original = as_float_image(image) if isinstance(image, np.ndarray) else load_image(image)
    return explain_image(model, original, target=target, queries=queries, seed=seed, budget=budget,
                         progress=progress, explainer=Saliency.from_options(**options), batch=batch).result

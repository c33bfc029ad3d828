"""Option types and option groups shared by the subcommands (typed numbers with one-line errors)."""
from __future__ import annotations

import argparse

from blackbox.errors import InputError

ALLOCATOR_CHOICES = ("uniform", "neyman", "flops")


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _bounded(kind: type, what: str, ok, rule: str):
    """An argparse type: ``kind`` parsed from the text, then held to ``ok`` (one-line errors)."""
    def parse(text: str):
        value = _number(text, kind, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value
    return parse


positive_int = _bounded(int, "a whole number", lambda v: v >= 1, "at least 1")
nonneg_int = _bounded(int, "a whole number", lambda v: v >= 0, ">= 0")
positive_float = _bounded(float, "a number", lambda v: v > 0, "> 0")
nonneg_float = _bounded(float, "a number", lambda v: v >= 0, ">= 0")
share = _bounded(float, "a number", lambda v: 0 <= v <= 1, "between 0 and 1")


def add_remote_options(parser: argparse.ArgumentParser, images: bool = True,
                       title: str = "remote models (gpt-vision, openai:<model>, http:<spec.json>)",
                       concurrency: int = 16, batch_help: str | None = None) -> None:
    """The endpoint, budget and retry options; ``images=False`` leaves out the vision-only ones;
    ``batch_help`` (what ``--batch`` does for this command) adds the half-price ways of sending,
    ``--batch`` and ``--service-tier``."""
    g = parser.add_argument_group(title)
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default: OPENAI_API_KEY)")
    g.add_argument("--base-url", metavar="URL",
                   help="OpenAI-compatible base URL (default: $OPENAI_BASE_URL or api.openai.com)")
    g.add_argument("--concurrency", type=positive_int, default=concurrency, metavar="N",
                   help=f"requests in flight (default: {concurrency})")
    g.add_argument("--rpm", type=nonneg_float, metavar="N", help="proactive limit: requests per minute")
    g.add_argument("--tpm", type=nonneg_float, metavar="N", help="proactive limit: tokens per minute")
    g.add_argument("--timeout", type=positive_float, default=60.0, metavar="S",
                   help="wall-clock deadline per request attempt: connect + send + read (default: 60)")
    g.add_argument("--max-attempts", type=positive_int, default=6, metavar="N", help="attempts per request (default: 6)")
    g.add_argument("--max-cost", type=nonneg_float, metavar="USD",
                   help="hard cap on money spent (needs a price for the model)")
    g.add_argument("--max-tokens", type=positive_int, metavar="N", help="hard cap on tokens spent")
    g.add_argument("--prices", metavar="JSON", help="price table {model: {input, output}} in USD per 1M tokens")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the query cache")
    if batch_help:
        g.add_argument("--batch", action="store_true", help=batch_help)
        g.add_argument("--service-tier", choices=("default", "flex"),
                       help="flex: OpenAI's flex processing (o3, o4-mini and gpt-5 models: see the price table) "
                            "at the batch price, answered one by one but slower; its 429 'resource unavailable' "
                            "is retried (raise --timeout if answers are slow)")
    if images:
        g.add_argument("--resolution", type=positive_int, metavar="PX",
                       help="longer side of the image sent (default: the model's own, 512 for chat models)")
        g.add_argument("--detail", choices=("low", "high", "auto"), default="low",
                       help="image detail asked of OpenAI models (default: low; the map is computed at 512 px "
                            "anyway). It sets the price: gpt-4o bills 85 tokens per image at low, 255 at high "
                            "for a 512-px image; gpt-4o-mini 2833 and 8500; patch-billed models (gpt-4.1-mini/"
                            "nano, o4-mini) bill by size whatever the detail")
        g.add_argument("--scoring", choices=("auto", "logodds", "logprob", "confidence", "frequency"), default="auto",
                       help="how an answer becomes a score (default: auto = probe the endpoint, then "
                            "logodds = log P(Yes) - log P(No) when it gives logprobs)")
        g.add_argument("--dry-run", action="store_true", help="send nothing; print what the run would spend")
        g.add_argument("--deadline", type=positive_float, metavar="S",
                       help="stop the whole run after S seconds (any model): no request starts later, none "
                            "runs past it; the result uses the queries answered by then")


def add_output_options(parser: argparse.ArgumentParser, *, json_help: str = "print one JSON object with the results",
                       progress: bool = True) -> None:
    """``--json`` and ``--no-progress``: how every command reports."""
    parser.add_argument("--json", action="store_true", help=json_help)
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


# -- your own model file (--model onnx:PATH / torchscript:PATH) -----------------------------------
MODEL_FILE_PREFIXES = ("onnx:", "torchscript:")
MODEL_FILE_OPTIONS = ("labels", "input_size", "resize", "crop_fraction", "mean", "std", "pixel_range",
                      "channels", "layout", "outputs")
IMAGENET_STATS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def image_size(text: str) -> tuple[int, int]:
    """``224`` or ``HEIGHTxWIDTH`` (``224x160``)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected S or HEIGHTxWIDTH, got {text!r}")
    values = tuple(positive_int(p) for p in parts)
    return values * 2 if len(values) == 1 else values


def channel_values(name: str):
    def parse(text: str) -> tuple[float, ...]:
        if text.strip().lower() == "imagenet":
            return IMAGENET_STATS[name]
        values = tuple(_number(p, float, "a number") for p in text.split(","))
        if len(values) not in (1, 3):
            raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got {text!r}")
        return values
    return parse


def add_model_file_options(parser: argparse.ArgumentParser) -> None:
    """Labels and preprocessing for ``--model onnx:PATH`` / ``torchscript:PATH``."""
    g = parser.add_argument_group(
        "your own model file (--model onnx:PATH or torchscript:PATH)",
        "The model maps an image tensor to class scores. ONNX files say their input size, layout and "
        "channel count when they fix them; the options below cover the rest.")
    g.add_argument("--labels", metavar="FILE",
                   help="class names: one per line, or a JSON list, in output order (default: the indices)")
    g.add_argument("--input-size", type=image_size, metavar="S|HxW",
                   help="input height x width (default: the ONNX file's, else 224)")
    g.add_argument("--resize", choices=("crop", "stretch"),
                   help="crop: the centred box of the input's shape, --crop-fraction of the shorter side "
                        "(default); stretch: the whole image resized to the input size")
    g.add_argument("--crop-fraction", type=positive_float, metavar="F",
                   help="share of the shorter side the crop keeps (default: 0.875 = 224/256)")
    g.add_argument("--mean", type=channel_values("mean"), metavar="M[,M,M]",
                   help="subtracted per channel, in --pixel-range units (default: imagenet = "
                        "0.485,0.456,0.406 for colour input, 0 for grey)")
    g.add_argument("--std", type=channel_values("std"), metavar="S[,S,S]",
                   help="divided per channel after the mean (default: imagenet = 0.229,0.224,0.225 for "
                        "colour, 1 for grey); --mean 0 --std 1 feeds the pixels as they are")
    g.add_argument("--pixel-range", type=float, choices=(1.0, 255.0), metavar="{1,255}",
                   help="pixels as 0..1 (default) or 0..255 before --mean/--std")
    g.add_argument("--channels", choices=("rgb", "bgr", "gray"),
                   help="channel order (default: rgb, or gray when the ONNX input has one channel)")
    g.add_argument("--layout", choices=("nchw", "nhwc"),
                   help="tensor layout (default: read from the ONNX input shape, else nchw as in PyTorch)")
    g.add_argument("--outputs", choices=("auto", "logits", "probs"),
                   help="what the model outputs (default: auto = probabilities if they sum to 1, else logits)")


def model_file_options(args) -> dict:
    """Keyword options for a model file from the arguments; {} for other models (an error if any
    model-file option was given for them)."""
    given = {k: getattr(args, k) for k in MODEL_FILE_OPTIONS if getattr(args, k, None) is not None}
    if not args.model.startswith(MODEL_FILE_PREFIXES):
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise InputError(f"{flag} applies to your own model files (--model onnx:PATH or torchscript:PATH), "
                             f"not to {args.model}")
        return {}
    return given


def add_training_options(group, *, lr: float | None, lr_help: str) -> None:
    """The options every learning command shares: allocator, Adam step, seed, checkpoint,
    evaluations and the learning-curve plot."""
    group.add_argument("--allocator", choices=ALLOCATOR_CHOICES, default="uniform",
                       help="how each step's queries are shared among its examples or images (default: uniform)")
    group.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--checkpoint", metavar="NPZ", help="save progress here and resume from it (same settings)")
    group.add_argument("--eval-every", type=positive_int, metavar="N",
                       help="also measure held-out accuracy every N steps (default: only at the start and the end)")
    group.add_argument("--plot", metavar="PNG", help="write the learning curves")

"""Multimodal alignment through a language model that is only queried -- a notebook-style script.

Run top to bottom (offline, about 6 minutes on 2 CPU cores):

    python examples/alignment.py [OUT_DIR]

It connects the embedded image encoder (EfficientNet-Lite0) to the embedded language model
(SmolLM2-135M-Instruct) with a small linear projector trained from forward queries of the LM only,
then classifies held-out images zero-shot by ranking the LM's likelihood of each class caption.
Writes OUT_DIR/alignment-curve.png and OUT_DIR/alignment-examples.png (default OUT_DIR: out/).

Data: scikit-learn's real handwritten digits (8x8 scans, upscaled to 224x224): they ship inside
a package (no download), have unambiguous one-word captions that are single LM tokens (" three"),
and enough images per class for a held-out split. Your own images instead:
``tasks.load_captioned_images("photos/", "captions.csv")`` (and a context like "A photo of").
"""
# %% setup
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from blackbox import tasks  # noqa: E402
from blackbox.adapters.causal_lm import load_causal_lm  # noqa: E402
from blackbox.adapters.image_features import image_features  # noqa: E402
from blackbox.alignment import evaluate, train_backprop, train_projector  # noqa: E402
from blackbox.plots import learning_curves, ranked_captions, save_figure  # noqa: E402
from blackbox.queries import Budget  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else "out"
os.makedirs(OUT, exist_ok=True)
STEPS = 36                     # training steps
BATCH = 32                     # images per step
QUERIES_PER_STEP = 512         # split across the batch's images by the allocator (16 each if uniform)
t0 = time.perf_counter()

# %% data and frozen image features (cached on disk after the first run)
data = tasks.load_digits((0, 1, 2, 3, 4), per_class=30, seed=0)     # five digits: chance is 20%
features = image_features(data.images, progress=True)
print(f"{data.summary()}, features {features.shape[1]}-d")

# %% the language model, the captions, and the projector
lm = load_causal_lm()
# The LM reads [context][soft token] and is asked for the class word. Text BEFORE the soft token
# matters: the first position of a causal LM is an attention sink, and a lone soft token there
# barely moves the output (measured: caption NLL 11.4 with no context vs 8.9 with one).
# The loss ("ranking") is the cross-entropy of the true caption among all class captions: one
# query per image returns every class word's log-probability, and only what separates the classes
# is learned (the true caption's NLL alone also rewards making every digit word likely).
setup = tasks.alignment_setup(lm, features, data, context="Handwritten digit:", loss="ranking", k=1, dims=16)
projector = setup.projector
print(f"projector: {projector.dims}+1 PCA inputs -> {projector.k} soft token of {lm.embed_dim} "
      f"({projector.weight.size} parameters)")


def heldout(p):
    return evaluate(lm, p, setup.test_x, setup.test_y, setup.task)


before = heldout(projector)
print(f"before training: held-out accuracy {before['accuracy']:.1%} (chance {before['chance']:.0%})")

# %% train from queries only: noise on the soft tokens (ULR), chain rule to the projector
lr_run = train_projector(lm, projector, setup.train_x, setup.train_y, setup.task, steps=STEPS, batch_size=BATCH,
                         queries_per_step=QUERIES_PER_STEP, sigma=0.3, lr=0.3, allocator="uniform", seed=0,
                         budget=Budget(max_queries=STEPS * QUERIES_PER_STEP), progress=True, eval_fn=heldout,
                         eval_every=6)
after = heldout(lr_run.learned)
print(f"queries only: held-out accuracy {after['accuracy']:.1%} after {lr_run.queries} queries "
      f"({lr_run.seconds:.0f} s)")

# %% the white-box reference: the same projector, batches and steps, exact gradients (autograd)
bp_run = train_backprop(lm, projector, setup.train_x, setup.train_y, setup.task, steps=STEPS, batch_size=BATCH,
                        lr=0.3, seed=0, eval_fn=heldout, eval_every=6)
bp = bp_run.after
ratio = after["accuracy"] / bp["accuracy"] if bp["accuracy"] > 0 else float("nan")
print(f"backprop reference: held-out accuracy {bp['accuracy']:.1%}; queries-only reaches {ratio:.0%} of it")

# %% plots: the learning curves, and a few held-out images with the LM's ranked captions
save_figure(learning_curves({"queries only (LR, output noise)": lr_run, "backprop": bp_run}, x="step",
                            loss_label=f"{setup.task.loss} loss", metric_label="held-out zero-shot accuracy",
                            chance=before["chance"],
                            title="EfficientNet-Lite0 -> projector -> SmolLM2-135M, trained through queries"),
            os.path.join(OUT, "alignment-curve.png"))
save_figure(ranked_captions(data.images[data.test], after["scores"], [f"digit {n}" for n in data.names],
                            setup.test_y, title="held-out digits: the LM's top captions given the projected image "
                                                "(* = true)"), os.path.join(OUT, "alignment-examples.png"))
print(f"wrote {OUT}/alignment-curve.png and {OUT}/alignment-examples.png in {time.perf_counter() - t0:.0f} s")

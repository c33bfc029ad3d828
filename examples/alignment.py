"""Multimodal alignment through a language model that is only queried -- a notebook-style script.

Run top to bottom (offline, about 6 minutes on 2 CPU cores):

    python examples/alignment.py [OUT_DIR]

It connects the embedded image encoder (EfficientNet-Lite0) to the embedded language model
(SmolLM2-135M-Instruct) with a small linear projector trained from forward queries of the LM only,
then classifies held-out images zero-shot by ranking the LM's likelihood of each class caption.
Writes OUT_DIR/alignment-curve.png and OUT_DIR/alignment-examples.png (default OUT_DIR: out/).

Data: scikit-learn's real handwritten digits (8x8 scans, upscaled to 224x224): they ship inside
a package (no download), have unambiguous one-word captions that are single LM tokens (" three"),
and enough images per class for a held-out split. The bundled photos are too few (7) for that.
"""
# %% setup
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

from blackbox.adapters.causal_lm import load_causal_lm
from blackbox.adapters.image_features import image_features, load_digit_set
from blackbox.alignment import CaptionTask, Projector, evaluate, train_backprop, train_projector
from blackbox.queries import Budget

OUT = sys.argv[1] if len(sys.argv) > 1 else "out"
os.makedirs(OUT, exist_ok=True)
CLASSES = (0, 1, 2, 3, 4)      # five digits: chance is 20%
PER_CLASS = 30                 # half for training, half held out
STEPS = 36                     # training steps
BATCH = 32                     # images per step
QUERIES_PER_STEP = 512         # split across the batch's images by the allocator (16 each if uniform)
t0 = time.perf_counter()

# %% data and frozen image features (cached on disk after the first run)
images, labels, names = load_digit_set(CLASSES, per_class=PER_CLASS, seed=0)
features = image_features(images, progress=True)
half = len(labels) // 2
train_x, train_y, test_x, test_y = features[:half], labels[:half], features[half:], labels[half:]
print(f"{len(labels)} digit images ({half} train / {len(labels) - half} held out), features {features.shape[1]}-d")

# %% the language model, the captions, and the projector
lm = load_causal_lm()
# The LM reads [context][soft token] and is asked for the class word. Text BEFORE the soft token
# matters: the first position of a causal LM is an attention sink, and a lone soft token there
# barely moves the output (measured: caption NLL 11.4 with no context vs 8.9 with one).
# The loss ("ranking") is the cross-entropy of the true caption among all class captions: one
# query per image returns every class word's log-probability, and only what separates the classes
# is learned (the true caption's NLL alone also rewards making every digit word likely).
task = CaptionTask("", [" " + w for w in names], context="Handwritten digit:", loss="ranking")
projector = Projector.fit(train_x, k=1, embed_dim=lm.embed_dim, dims=16, scale=lm.embedding_scale(),
                          init=lm.embed_tokens(" picture")[0], seed=0)
print(f"projector: {projector.dims}+1 PCA inputs -> {projector.k} soft token of {lm.embed_dim} "
      f"({projector.weight.size} parameters)")


def heldout(p):
    return evaluate(lm, p, test_x, test_y, task)


before = heldout(projector)
print(f"before training: held-out accuracy {before['accuracy']:.1%} (chance {before['chance']:.0%})")

# %% train from queries only: noise on the soft tokens (ULR), chain rule to the projector
budget = Budget(max_queries=STEPS * QUERIES_PER_STEP)
lr_run = train_projector(lm, projector, train_x, train_y, task, steps=STEPS, batch_size=BATCH,
                         queries_per_step=QUERIES_PER_STEP, sigma=0.3, lr=0.3, allocator="uniform", seed=0,
                         budget=budget, progress=True, eval_fn=heldout, eval_every=6)
after = heldout(lr_run.projector)
print(f"queries only: held-out accuracy {after['accuracy']:.1%} after {lr_run.queries} queries "
      f"({lr_run.train.seconds:.0f} s)")

# %% the white-box reference: the same projector, batches and steps, exact gradients (autograd)
bp_run = train_backprop(lm, projector, train_x, train_y, task, steps=STEPS, batch_size=BATCH, lr=0.3,
                        seed=0, eval_fn=heldout, eval_every=6)
bp = heldout(bp_run.projector)
ratio = after["accuracy"] / bp["accuracy"] if bp["accuracy"] > 0 else float("nan")
print(f"backprop reference: held-out accuracy {bp['accuracy']:.1%}; queries-only reaches {ratio:.0%} of it")

# %% plot: the training curve
import matplotlib.pyplot as plt  # noqa: E402

from blackbox.plots import save_figure  # noqa: E402

fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
q, loss = lr_run.train.curve("loss")
a1.plot(q, loss, lw=1, label="queries only (LR, output noise)")
a1.set_xlabel("training queries"), a1.set_ylabel(f"{task.loss} loss (batch mean)"), a1.legend()
a1.xaxis.set_major_locator(plt.MaxNLocator(5))
for run, name in ((lr_run, "queries only"), (bp_run, "backprop")):
    steps = [e["step"] for e in run.train.evals]
    a2.plot(steps, [e["accuracy"] for e in run.train.evals], marker="o", label=name)
a2.axhline(before["chance"], color="grey", ls="--", label="chance")
a2.set_xlabel("training step"), a2.set_ylabel("held-out zero-shot accuracy"), a2.legend()
fig.suptitle("EfficientNet-Lite0 -> projector -> SmolLM2-135M, trained through queries")
save_figure(fig, os.path.join(OUT, "alignment-curve.png"))

# %% plot: a few held-out images with the LM's ranked captions
fig, axes = plt.subplots(1, 5, figsize=(13, 3.4))
for ax, i in zip(axes, range(5)):
    ax.imshow(images[half + i])
    ax.axis("off")
    scores = after["scores"][i]
    order = np.argsort(-scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    lines = [f"{'*' if c == test_y[i] else ' '} digit {names[c]}: {probs[c]:.2f}" for c in order[:3]]
    ax.set_title("\n".join(lines), fontsize=8, family="monospace", loc="left")
fig.suptitle("held-out digits: the LM's top captions given the projected image (* = true)")
save_figure(fig, os.path.join(OUT, "alignment-examples.png"))
print(f"wrote {OUT}/alignment-curve.png and {OUT}/alignment-examples.png in {time.perf_counter() - t0:.0f} s")

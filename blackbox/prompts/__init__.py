"""Prompts for models that are only queried: what users tune for hosted chat models.

* :mod:`.prompt` -- a prompt (instruction, demonstrations, words, template) rendered as chat
  messages and as completion text, and the prompt file a plain ``openai`` client sends as it is;
* :mod:`.space` -- one categorical policy over instruction, number of demonstrations, the
  demonstrations themselves (ordered, without replacement) and word slots;
* :mod:`.rewards` -- label log-probabilities, or sampled answers scored by a metric;
* :mod:`.signal` -- a few paid probes before the budget: stop when the scores carry no signal;
* :mod:`.instructions` -- candidate instructions (defaults, a file, proposals by the model);
* :mod:`.search` -- the gradient source for the one training loop, and :func:`tune_prompt`.
"""
from .instructions import default_instructions, propose_instructions, read_instructions
from .prompt import Prompt, read_prompt_file
from .rewards import Example, LabelLogprobs, LabelScores, SampledAnswers, exact_match, normalise_answer
from .search import PromptSearch, tune_prompt
from .signal import probe_signal
from .space import PromptSpace, default_shots

__all__ = ["Prompt", "read_prompt_file", "PromptSpace", "default_shots", "Example", "LabelLogprobs", "LabelScores", "SampledAnswers",
           "exact_match", "normalise_answer", "PromptSearch", "tune_prompt", "probe_signal", "default_instructions",
           "propose_instructions", "read_instructions"]

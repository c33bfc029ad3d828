"""Data sets and experiment recipes for prompt tuning and alignment, shared by the CLI, the
examples and the benchmarks.

* built-in data: :func:`animal_task` (which animal group an ImageNet class description is about)
  and :func:`load_digits` (real handwritten digits);
* the user's data: :func:`load_text_task` (train / test tables of text and label) and
  :func:`load_captioned_images` (a folder of images with a table of captions);
* recipes: :func:`soft_prompt_setup` and :func:`alignment_setup` (they receive the model).
"""
from .animals import (DEFAULT_CANDIDATES, DISCRETE_TEMPLATE, SOFT_TEMPLATE, UNINFORMATIVE_INIT, animal_task,
                      imagenet_description_task)
from .digits import load_digits
from .images import LabelledImages, load_captioned_images
from .recipes import AlignmentSetup, alignment_setup, soft_prompt_setup
from .tables import read_table
from .texts import load_text_task

__all__ = ["DEFAULT_CANDIDATES", "DISCRETE_TEMPLATE", "SOFT_TEMPLATE", "UNINFORMATIVE_INIT", "animal_task",
           "imagenet_description_task", "load_digits", "LabelledImages", "load_captioned_images",
           "AlignmentSetup", "alignment_setup", "soft_prompt_setup", "read_table", "load_text_task"]

"""Callbacks that run the perforated cycle inside other training frameworks.

- `perforate.integrations.lightning.PerforateCallback`: Lightning ``Trainer``
  (``pip install 'perforate[lightning]'``);
- `perforate.integrations.hf.PerforateTrainerCallback`: Hugging Face ``transformers.Trainer``
  (``pip install 'perforate[hf]'``).

Each module imports its framework when it is imported (its callback subclasses the
framework's), and raises `perforate.errors.MissingExtraError` with the ``pip install`` to run
when it is missing; ``import perforate`` never imports either framework.
"""

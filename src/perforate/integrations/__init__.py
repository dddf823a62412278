"""Callbacks that run the perforated cycle inside other training frameworks.

- `perforate.integrations.lightning.PerforateCallback`: Lightning ``Trainer``
  (``pip install 'perforate[lightning]'``);
- `perforate.integrations.hf.PerforateTrainerCallback`: Hugging Face ``transformers.Trainer``
  (``pip install 'perforate[hf]'``).

Each module imports its framework lazily, when a callback is built, so ``import perforate``
never needs them.
"""

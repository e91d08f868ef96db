"""Integrations with other libraries; each submodule imports its library only when imported.

* :mod:`labelsmooth.integrations.hf`: Hugging Face ``transformers.Trainer`` (loss with the
  causal shift, ``ignore_index`` and ``num_items_in_batch``; the linear head without the
  logits; calibration metrics). Import it explicitly:
  ``import labelsmooth.integrations.hf``.
"""

__all__ = ["hf"]

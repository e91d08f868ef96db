"""Integrations with other libraries; each submodule imports its library only when imported.

* :mod:`labelsmooth.integrations.hf`: Hugging Face ``transformers.Trainer`` (loss with the
  causal shift, ``ignore_index`` and ``num_items_in_batch``; the linear head without the
  logits; calibration metrics). Import it explicitly:
  ``import labelsmooth.integrations.hf``.
* :mod:`labelsmooth.integrations.lightning`: ``CalibrationCallback``, which logs ECE (both
  binnings), NLL, Brier and AURC of each validation epoch, synced across processes, and a
  reliability diagram to loggers that take figures.
"""

__all__ = ["hf", "lightning"]

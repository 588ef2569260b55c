"""Training: fine-tuning SAM the paper's way, with focal + dice loss.

Owns the losses (``losses``), the training sources (``datasets``: phantoms, the shared split),
simulated prompts and correction clicks (``prompts_sim``), the seeded, resumable trainer
(``train``) and the pinning of an embedded model's SHA256 (``pin_model``). It may import ``sam``,
``registration`` (to project CT phantoms), ``cases`` and everything below them; nothing in the
Slicer extension's run path imports it.
"""

"""Evaluation of a pretrained model: the protocols, and what they share.

- ``tasks/``: the protocols, one module each (zeroshot, linear, segment, retrieve, relations, grounding,
  diagnostics); each is ``run_<task>(loaded_model, data_folder, out_folder, <Task>Config) -> TaskResult``;
- ``baselines``: the floor (random init) and the ceiling (supervised) every pretrained model is read against;
- shared parts: ``loading`` (the model to evaluate), ``features`` (batched, cached features), ``common``
  (tables, probe targets, label fractions), ``metrics``, ``stats`` (bootstrap intervals), ``optim`` (the
  heads' optimiser), ``results`` (the ``results.json`` format);
- commands: ``cli`` (``reclf evaluate TASK``), ``report`` (``reclf report``), ``explain`` (``reclf explain``).

The demo that runs all of this over every method is an application above this layer (``reclf.demo``).
Modules import torch lazily where they can; see docs/evaluation.md.
"""

"""Evaluation: zero-shot, linear probe, segmentation, retrieval, relations, grounding; reports; the demo.

Each task is ``run_<task>(loaded_model, data_folder, out_folder, <Task>Config) -> TaskResult`` and
writes ``results.json`` (see :mod:`reclf.evaluate.results`); the command line is
``reclf evaluate TASK`` (:mod:`reclf.evaluate.cli`), ``reclf report``, ``reclf explain`` and
``reclf demo``. Modules import torch lazily where they can; see docs/evaluation.md.
"""

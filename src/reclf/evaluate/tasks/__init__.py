"""The evaluation protocols, one module each (docs/evaluation.md states every protocol):

- ``zeroshot``: zero-shot classification with versioned prompt files (accuracy, macro F1, AUROC);
- ``linear``: linear probe on the frozen global feature at label fractions;
- ``segment``: U-Net segmentation on the encoder's feature pyramid (Dice), frozen or fine-tuned;
- ``retrieve``: image -> report and report -> image retrieval (R@K, P@K by class, median rank);
- ``relations``: does the model bind a finding to its side, zone, severity and polarity (true caption vs foils);
- ``grounding``: does a finding word's attention land on the finding's mask (pointing game, IoU, entropy);
- ``phrase_grounding`` (``phrase-grounding``): BioViL's MS-CXR protocol, also on SynthCXR (CNR, mIoU, pointing game);
- ``diagnostics``: do IRM and SRM do what RECLF claims (importance AUROC, relation mass).

Each is ``run_<task>(loaded_model, data_folder, out_folder, <Task>Config) -> TaskResult`` and writes
``results.json``; ``reclf evaluate TASK`` (``reclf.evaluate.cli``) runs them from the command line.
"""

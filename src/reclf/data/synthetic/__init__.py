"""SynthCXR: procedural chest radiographs + MIMIC-style reports with exact masks and labels.

Modules: ``vocab`` (finding names, labels, synonyms, location/severity words, cues), ``anatomy``,
``findings``, ``report_text``, ``generate`` (``generate``, ``render_study``), ``preview``, ``cli``
(``reclf synth``). Nothing heavy is imported here so ``vocab`` stays cheap to import.
"""

"""Data: the canonical study table, SynthCXR, real-data adapters, reports, words, datasets."""

from reclf.data.studies import CHEXPERT_LABELS, StudyTableError, read_studies, write_studies

__all__ = ["CHEXPERT_LABELS", "StudyTableError", "read_studies", "write_studies"]

"""Figures (matplotlib, Agg): bar charts with intervals, attention overlays, IRM-shaded reports, SRM matrices."""

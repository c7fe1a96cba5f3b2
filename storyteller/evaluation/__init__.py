"""Scoring a trained captioner: :mod:`.evaluate`, :mod:`.metrics`, :mod:`.provenance`."""

"""Scoring a trained captioner: greedy and beam on the test split (:mod:`.evaluate`), the
captioning metrics (:mod:`.metrics`) and what made each result (:mod:`.provenance`)."""

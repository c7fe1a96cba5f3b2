"""Figures people would rather look at than read: loss curves and caption grids
(:mod:`.plots`), and where an attention captioner looked (:mod:`.attention_maps`)."""

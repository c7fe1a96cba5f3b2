"""Caption datasets, the caption normaliser, the vocabulary, the drawn sample and word vectors.
No torch at import: the CLI reads data first."""

"""The data layer: caption datasets (:mod:`.captions`), the one caption normaliser
(:mod:`.text`), the vocabulary (:mod:`.vocab`), the embedded drawn sample (:mod:`.sample`) and
pretrained word vectors (:mod:`.embeddings`). No torch at import: the CLI reads data first."""

"""Image features: the encoders (registry and networks), opening photos, decoding them in
batches, the extraction loop and the feature cache's files."""

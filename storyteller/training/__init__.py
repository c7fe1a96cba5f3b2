"""Training the captioner on cached features (:mod:`.train`), on one device or one process
per GPU (:mod:`.distributed`)."""

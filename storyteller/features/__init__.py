"""Image features: the encoder registry as data (:mod:`.encoder_specs`, torch-free), the CNNs
that build each entry (:mod:`.encoders`), opening untrusted photos with bounded work
(:mod:`.images`), the resumable feature cache (:mod:`.cache`), the ``encoders`` table
(:mod:`.encoder_table`) and encoder fine-tuning (:mod:`.finetune`)."""

"""Image features: the encoder registry as data (:mod:`.encoder_specs`, torch-free), the CNNs
that build each entry (:mod:`.encoders`), opening untrusted photos with bounded work
(:mod:`.images`), image files into pixel batches on the CPU or the device (:mod:`.batch_decoding`),
the extraction loop (:mod:`.cache`) into the feature cache's files (:mod:`.cache_format`), the
``encoders`` table (:mod:`.encoder_table`) and encoder fine-tuning (:mod:`.finetune`)."""

"""Training a captioner: the run's model config (:mod:`.model_setup`), its data (:mod:`.data`),
what it resumes from (:mod:`.state`), the loop (:mod:`.train`), encoder fine-tuning
(:mod:`.finetune`) and one process per GPU (:mod:`.distributed`)."""

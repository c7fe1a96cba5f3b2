"""A trained captioner in front of people: captioning untrusted uploads (:mod:`.server`), the
app's example pictures (:mod:`.examples`), a Hugging Face Space (:mod:`.deploy`) and a Hub
model (:mod:`.hub`, :mod:`.hub_card`, :mod:`.hub_push`)."""

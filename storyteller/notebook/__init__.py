"""What the numbered notebooks use and the library does not: the set-up cell (:mod:`.settings`
with :mod:`.kaggle`, :mod:`.runs`, :mod:`.hardware`), notebook 05's cells (:mod:`.extras`,
:mod:`.story_cells`, :mod:`.publish`), :mod:`.report`, :mod:`.inside`, :mod:`.bootstrap` and
:mod:`.tools` (``notebooks run/check/clean``)."""

"""What the numbered notebooks use and the library does not, a module a job:

* :mod:`.settings`: the set-up cell (``setup_notebook``), which puts together
  :mod:`.kaggle` (where Kaggle mounts data, earlier runs and secrets), :mod:`.runs` (the run
  folder and "run notebook N first" checks) and :mod:`.hardware` (sizes for the GPUs found);
* notebook 05's cells: :mod:`.extras` (installing optional requirements),
  :mod:`.story_cells` (the story) and :mod:`.publish` (the Hub model and the Space);
* :mod:`.report` (tables and figures of a run), :mod:`.inside` (the look-inside cells),
  :mod:`.bootstrap` (installing the package into a bare kernel) and :mod:`.tools`
  (``notebooks run/check/clean``).
"""

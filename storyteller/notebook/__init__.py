"""What the numbered notebooks use and the library does not: the set-up cell's settings
(:mod:`.settings`), the tables and figures of a run (:mod:`.report`), the look-inside cells
(:mod:`.inside`), installing the package into a bare kernel (:mod:`.bootstrap`) and keeping
the series runnable and clean (:mod:`.tools`)."""

"""ephemeralml.bench: the side-by-side benchmark and the process harness.

Not a program of the system: it starts the three programs (and a bare in-process
baseline) to measure them, so it may import any of them; none of them imports it.

Pure, unit-tested parts: :mod:`._plan` (what a run does), :mod:`._stats`
(percentiles, summaries), :mod:`._targets` (the targets and their checks),
:mod:`._report` (the result's derived parts and the table). The rest:
:mod:`._processes` (the one way to start and stop the programs, shared with
``scripts/soak.py`` and the integration and adversarial tests), :mod:`._procfs`
(``/proc`` probes), :mod:`._cases` (the measured cases), :mod:`._run` (one run,
in order) and :mod:`._cli` (the command line).
"""

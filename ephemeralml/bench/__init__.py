"""ephemeralml.bench: the side-by-side benchmark and its process harness.

Not a program of the system: it starts the three programs (and a bare in-process
baseline) to measure them, so it may import any of them; none of them imports it.
"""

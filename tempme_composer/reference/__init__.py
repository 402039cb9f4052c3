"""Oracles for tests and benchmarks, not part of the model: straightforward, reference-shaped implementations
that the efficient model is checked against (`stop_reference`: STOP as its authors' code computes it)."""

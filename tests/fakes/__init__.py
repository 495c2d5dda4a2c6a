"""Fakes for faults a real server cannot be made to produce, each named for what it
fakes; everything else the tests run for real (docs/design.md §6)."""

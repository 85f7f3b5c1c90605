"""Benchmarks of docs/design.md §6: each project figure against a limit measured in the same run."""

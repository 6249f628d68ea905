"""The exercise track: manifest, single-source builder, grading plumbing and the runner.

Nothing in the library imports this package; it sits on top of it.
"""

"""Scores of a model's answers and inputs: confidence, novelty and drift. Pure numpy, no I/O."""

"""Convergence-rate studies: the study file, the Ray Tune run of its trials, MLflow records."""

"""Measurements of AIR outside training: the estimators side by side, the first step's value."""

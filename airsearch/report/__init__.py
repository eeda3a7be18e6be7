"""What a study found: results read back from MLflow, as tables, figures and a report run."""

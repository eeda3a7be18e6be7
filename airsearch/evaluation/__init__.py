"""Reading a trained model: held-out count accuracy, localisation, outcome labels, figures."""

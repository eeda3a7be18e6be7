"""Training many seeds as replicas of one batched model: step, loop, optimiser, checkpoints."""

"""Models, recipes, the training loop, augmentation, evaluation, and the train/evaluate stage."""

"""Models and predictions made elsewhere: model cards, loaders, imported predictions, exported models."""

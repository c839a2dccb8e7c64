"""Small datasets for recipes and convergence tests (generated from a seed: nothing is downloaded)."""

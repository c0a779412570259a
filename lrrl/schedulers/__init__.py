"""Drop-in PyTorch learning-rate schedulers."""

"""One train-loop interface and its backends."""

"""Built-in training losses."""

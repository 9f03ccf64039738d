"""Built-in feature encoders, one module per encoder family."""

"""Built-in dataset readers, one module per layout."""

"""Built-in reasoners: local (offline, from extracted features), gemini and openai-compatible servers."""

"""mer: multimodal video emotion recognition with reasoning priors."""

__version__ = "0.1.0"

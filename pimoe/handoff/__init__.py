"""The exact computation expert and its hand-off: arithmetic extraction, exact evaluation, decoding, evaluation sets."""

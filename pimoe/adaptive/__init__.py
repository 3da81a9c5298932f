"""Adaptive routing: a feedback controller over measured routing statistics, and the layer it tunes."""

"""Measurement: synchronised latency, peak memory, routing statistics, and the layer benchmark."""

"""PiMoE-LM, the small byte-level language model: text and labels, data, model, generation, checkpoints, training."""

"""Making a trained layer smaller or portable: quantisation, pruning, distillation, ONNX export, the optimisation report."""

"""Expert parallelism on torch.distributed: experts split over ranks, and training under torchrun."""

"""The fast path's Triton ops, one per module: each op's kernel(s) beside the host launcher that sizes its grid.

route (fused router), sort (counting sort into expert order), row_stats, gather (gather + norm), up_gemm (gather, norm
and up GEMM in one), up_act_gemm (up GEMM with the activation in its epilogue, TMA or pointer loads), down_gemm,
down_tma_gemm, activate (the separate activation pass), combine; jit holds the device helpers they share and
launch_options the host-side ones. Every op module imports Triton: import them only on a CUDA path (or under
TRITON_INTERPRET=1 in tests), never from a module that `import pimoe` reaches at load time.
"""

"""Passes for the CPU target only: weight packing into the kernels' layouts, bf16 weight storage, blocked NCHW[x]c
activations and Winograd convolutions."""

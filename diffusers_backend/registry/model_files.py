"""What a model file is, by its ending: one list for the loader, the resolver and the host.

Dependency-free on purpose: the pipeline registry imports it while listing pipelines, which
must not import torch, diffusers or grpc.
"""

# Single-file checkpoints: safetensors (and its .sft spelling), GGUF, and pickle formats.
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin")
# Pickle files can run code when loaded: refused while SAFETENSORS is on.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

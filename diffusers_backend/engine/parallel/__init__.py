"""One model over several processes (``TensorParallelSize >= 2``): diffusers' context
parallelism on torch.distributed, run by worker processes that the server process drives."""

"""The loaded model's owner: its life cycle, the queue and batching, the pipeline thread and
the output writers."""

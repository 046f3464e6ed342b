"""The inference engine: prompt building, stop rules, greedy decoding with speculation, the KV cache.

Runs any loaded causal LM (dense or a sub-model); the kernels in `subcoder.pruner.kernels` make it fast on CPUs.
"""

"""The inference engine: runs any loaded causal LM (dense or a sub-model) for code completion.

- `prompt`: the token ids for the text around the cursor (FIM orders, the budget, a stable cut);
- `stops`: where a completion ends (stop tokens, stop rules, the final trim);
- `completer`: `Completer`, prefill and greedy decoding with KV-cache reuse per key and cancellation;
- `speculate`: draft tokens from the context, verified several per pass;
- `kvcache`: a KV cache that grows in place; `options`: the engine's switches.

The kernels in `subcoder.pruner.kernels` make it fast on CPUs. Editor policy (typed-ahead reuse, a
result cache) is the server's: `subcoder.server.editor`.
"""

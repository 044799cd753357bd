"""Running any artifact: `load.open_model(path)` gives an HFModel (a folder, through transformers) or a
GGUFModel (a .gguf file, through llama.cpp) with one interface: logits, token generation, text
streams, chat template, weights format, memory kind, close(). Nothing else tells the backends apart.
`perplexity` (eval-ppl), `generate` (sampling, streaming), `chat_prompt` (templates), `plot`.
"""

"""The shared core: reading checkpoints and writing Llama folders and GGUF files.

- `families/`: one module per architecture, registered in `families.FAMILIES`; every other module asks
  the family object (`ckpt.family`) instead of comparing names.
- `checkpoint` (streamed tensor reads), `shapes`, `mup` (the fold), `tensors` (OutTensor, byte counts,
  the --dtype resolver), `errors` (the one error type), `quiet` (silencing libraries' bars and logs),
  `template_sandbox` (chat templates compiled and rendered under a budget: chat's and convert's check).
- `to_llama` + `safetensors_out` (--to llama), `gguf_plan` + `gguf_export` + `gguf_vocab` +
  `gguf_kquant` (--to gguf), `describe` (inspect), `tiny` (published-layout test checkpoints).
"""

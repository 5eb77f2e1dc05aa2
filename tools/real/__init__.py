"""Real-model tooling: fetch the Qwen GGUF, convert it, train LoRA controls, measure the gate on real weights."""

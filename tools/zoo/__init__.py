"""The shipped tiny models: a shared word-level tokenizer, the trained zoo and the planted-circuit models."""

"""Serving the fine-tuned model with a serving engine: export to GGUF with llama.cpp's own
converters (`gguf_export`), and llama.cpp's OpenAI-compatible server (`llama_server`) that
`medllm_ner`'s OpenAI backend talks to. vLLM on GPUs: docs/serving.md."""

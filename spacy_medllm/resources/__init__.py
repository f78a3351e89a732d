"""Data shipped inside the package: the default LoRA adapter of `medllm_ner` (`adapters/medllm-en`,
with its model card). Built by the project workflow `default-adapter`."""

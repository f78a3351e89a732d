"""The transformers backend: `HFGenerator` (a causal LM with an optional PEFT LoRA adapter).

By job: `generator` (settings, prompts, the generation loop, saving), `loading` (model, adapter,
dtype, quantisation), `decoding` (the draft-and-check loop and the shared-prefix cache),
`automaton` and `vocabulary` (constrained decoding), `decoding_steps` (logits processors,
stopping criteria, drafts for transformers' `generate`).
"""

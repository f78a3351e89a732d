"""LoRA fine-tuning by job: settings (`config`), the run's examples (`examples`) and token records
(`records`), batches and loss (`collate`), checkpoints and the saved adapter (`checkpoints`), and
the loop (`trainer`).
"""

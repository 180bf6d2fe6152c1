"""Baselines from the papers MP2 compares with: Child-Tuning and MUPPET-style pre-finetuning."""

"""Glue for training front ends that step schedulers their own way (``lrrl.integrations.hf``).

Most of lrrl's schedulers need none: transformers' ``Trainer`` takes them through
``optimizers=(optimizer, scheduler)`` or ``lr_scheduler_type="greedy"``, and a Lightning
``configure_optimizers`` through its scheduler config (``monitor`` feeds loss-driven ones).
What is here fills the one gap: handing the Trainer's training loss to ``step(loss)``.
"""

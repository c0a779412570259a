"""Reinforcement-learning agents, baseline schedulers and GreedyLR distillation (``lrrl.agents``)."""

"""Gymnasium environments of lrrl (``lrrl.envs``)."""

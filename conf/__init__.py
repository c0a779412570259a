"""Hydra configuration tree of lrrl (a package so that configs install with it)."""

"""lrrl's Hydra plugins, installed as ``hydra_plugins.lrrl_sweeper`` (Hydra loads plugins from
the ``hydra_plugins`` namespace only). Modules here import nothing heavy: Hydra imports them
at the start of every app in the environment.
"""

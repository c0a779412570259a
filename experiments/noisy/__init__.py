"""The noisy-training comparison of tuned GreedyLR and tuned cosine annealing.

``problems`` builds the small training problems and their noise conditions, ``training`` runs
one problem under one scheduler, ``tuning`` gives both schedulers the same search budget, and
``summary`` turns per-run results into the report's figures. ``experiments/greedylr_noisy.py``
is the command that runs the study.
"""

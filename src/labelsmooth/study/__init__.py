"""The study: data, models and training used by ``labelsmooth demo`` (and the sweeps).

Needs the ``study`` extra (scikit-learn for the bundled digits data, matplotlib for figures).
"""

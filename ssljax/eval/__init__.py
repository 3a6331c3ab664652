"""Evaluation of pre-trained encoders: `python -m ssljax.eval {knn,linear,semi,perceptual}`."""

"""Training: the model, data sources, the training loop and its logs, checkpoints.
"""

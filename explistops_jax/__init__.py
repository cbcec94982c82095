"""explistops-jax: Explained-ListOps datasets, SeqIO tasks, Flax T5 training and scoring."""

__version__ = "0.1.0"

"""Hybrid-LM ablation workbench: component maps, ablations as nnsight traces, metrics, stores."""

__version__ = "0.1.0"

"""Counterfactory: controlled counterfactual images and the evaluation that shows they help."""

__version__ = "0.1.0"

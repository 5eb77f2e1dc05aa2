"""Tasks: prompt datasets and their counterfactuals. Submodules import torch, so nothing is imported here."""

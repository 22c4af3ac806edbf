"""SDA Train LoKr: train an SDA LoKr on the loaded student and teacher MODELs, inside ComfyUI (glue only).

checks    the node's inputs, and where a run's files go      conds     prompts into the model's conds
session   the models on the device while training             progress  progress, evals, the run's LoKr file
node      the node itself: one training call, its outputs and report
"""
from .node import NODES, SDATrainLoKr

__all__ = ["NODES", "SDATrainLoKr"]

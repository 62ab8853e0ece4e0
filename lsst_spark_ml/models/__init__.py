"""Torch modules only (no Spark): MBRNN and its ensemble."""
from .mbrnn import (MBRNN, MBRNNEnsemble, anchor_loss, anchor_loss_from_log_probs, bin_edges,
                    ensemble_probabilities, redshift_to_bin)

__all__ = ["MBRNN", "MBRNNEnsemble", "anchor_loss", "anchor_loss_from_log_probs", "bin_edges",
           "ensemble_probabilities", "redshift_to_bin"]

"""Torch modules only (no Spark): MBRNN, its ensemble, and the DCP pair."""
from .mbrnn import (MBRNN, MBRNNEnsemble, anchor_loss, anchor_loss_from_log_probs, bin_edges,
                    ensemble_probabilities, redshift_to_bin)
from .dcp import DCPPair, dcp_score, discrepancy, discrepancy_loss, entropy

__all__ = ["MBRNN", "MBRNNEnsemble", "anchor_loss", "anchor_loss_from_log_probs", "bin_edges",
           "ensemble_probabilities", "redshift_to_bin", "DCPPair", "dcp_score", "discrepancy", "discrepancy_loss",
           "entropy"]

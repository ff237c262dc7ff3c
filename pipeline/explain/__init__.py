"""CAM methods, the torch-free heatmap codec, faithfulness checks, facial regions, the explain stage."""

"""The Explain tab: heatmaps beside the pathway map, neuron masks and curves, live with the slider."""

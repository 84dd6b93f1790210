"""What the engine and the methods do to a network: finding its activations, masking them
(neurons), and folding batch norms into convolutions (folding)."""

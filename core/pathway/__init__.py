"""The critical pathway of one input: the engine (neuron scores, masks at a sparsity, pathway
maps) and the deletion/insertion curves it serves live."""

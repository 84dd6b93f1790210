"""PruneScope's engine: pure computation (torch, numpy, captum). Never imports Qt."""

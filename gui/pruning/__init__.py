"""The Pruning tab: whole-model pruning and what it does to explanations."""

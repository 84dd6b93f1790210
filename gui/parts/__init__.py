"""What the tabs share: the worker thread, the session context, heatmap and layer views."""

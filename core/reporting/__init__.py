"""Results drawn and written up: figures (matplotlib, never pyplot) and the explain report."""

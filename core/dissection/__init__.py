"""Network dissection: what each channel detects, and the concept labels built on it."""

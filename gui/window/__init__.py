"""The main window: its tabs, model choice, thumbnails and settings."""

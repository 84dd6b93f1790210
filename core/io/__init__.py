"""Files in and out: images, output folders, colour maps for display, bundled resources."""

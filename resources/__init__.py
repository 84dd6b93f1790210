"""Bundled data: sample photos, icons, ImageNet class names and the desktop entry. A package so
that a wheel carries them; `core.io.resources` finds them in a checkout, a wheel and the bundle."""

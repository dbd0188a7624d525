"""Data layer: readers, synthetic generator, prepared layout, split and sampling."""

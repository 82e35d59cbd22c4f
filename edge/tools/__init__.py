"""Bench, demo and FP16 check: the only part of edge/ that may import train/ or calibrate/."""

"""Metrics: pure functions of predictions and ground truth; they import nothing of sparc-eval."""

"""Task kinds: the task card, the runner registry and one runner module per kind."""

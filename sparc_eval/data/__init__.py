"""Dataset readers: one per on-disk format (registered in data.registry), the SynthScenes generator, manifests."""

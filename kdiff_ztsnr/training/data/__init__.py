"""Training data: §4.1.2 aspect-ratio buckets, image folders with tags, the §4.3 tag weights, the synthetic
captioned set, the latent cache with appendix-B scale-and-shift, and the per-rank batch source."""

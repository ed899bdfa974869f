"""Data: dataset layouts (COD10K, CAMO, NC4K, CHAMELEON, SINet-style, image + mask folders),
reading images and masks, augmentation, the backbone's input normalisation, datasets and the
train/validation split, the cache, the synthetic generator and `camodet check`. Imports config
only."""

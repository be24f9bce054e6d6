"""Training and evaluation on frozen CLIP features: data layouts, the feature cache, the training
loop, metrics, ablations and plots. The live pipeline never imports this package."""

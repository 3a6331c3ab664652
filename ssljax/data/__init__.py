"""Input data: augmentations (`augment`), the dataset registry (`registry`), the train
and eval pipelines (`pipeline`) and offline Fashion-MNIST preparation (`fashion_mnist`)."""

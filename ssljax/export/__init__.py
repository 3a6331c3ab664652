"""Pre-trained encoders out of ssljax: PyTorch state_dicts for torchvision and timm.

`python -m ssljax.export` (`__main__`) writes the file and its JSON card; `convert` maps
the variables (numpy, no torch); `files` writes and reads them (`load_torch_model`);
`encoder` is `ssljax.load_encoder`, a run's encoder as a JAX function of images.
"""

"""Measuring on a device: the only package that touches torch.cuda or pynvml."""

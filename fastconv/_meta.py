"""Fake (meta) kernels for torch.ops.fastconv.* so torch.compile / FakeTensor can trace them."""

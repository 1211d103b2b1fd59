"""The RNN ops, imported as ``aurora.kernels``: our PyTorch forms on CPU, fla / mamba-ssm kernels on CUDA."""

if __name__ != "aurora.kernels":  # the bare name `kernels` from inside a checkout: the PyPI package's (aurora/_checkout.py)
    from aurora._checkout import hand_over as _hand_over

    _hand_over(__name__, __path__[0])

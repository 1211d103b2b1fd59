"""Video, annotations, shards and the DataModule, imported as ``aurora.data``."""

if __name__ != "aurora.data":  # the bare name `data` from inside a checkout: the PyPI package's (aurora/_checkout.py)
    from aurora._checkout import hand_over as _hand_over

    _hand_over(__name__, __path__[0])
